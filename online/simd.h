/* simd.h -- how online/ asks for vector code in its hot kernels.
 *
 * The kernels loop over k (16 or 32 in practice, known only at run time).
 * On x86-64 with GCC or clang each is compiled twice, for the baseline
 * and for x86-64-v3 (AVX2, FMA), and the loader picks one per machine
 * (ifunc), so a portable binary still runs the wide code where it can.
 * Elsewhere, and under the sanitizers, the attribute is empty.
 */
#ifndef NMFD_ONLINE_SIMD_H
#define NMFD_ONLINE_SIMD_H

#if defined(__x86_64__) && defined(__gnu_linux__) &&                           \
    (defined(__GNUC__) || defined(__clang__)) &&                               \
    !defined(__SANITIZE_ADDRESS__) && !defined(NMFD_NO_CLONES)
#define ONLINE_KERNEL                                                          \
    __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define ONLINE_KERNEL
#endif

#endif
