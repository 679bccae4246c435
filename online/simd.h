/* simd.h -- how online/ asks for vector code in its hot kernels.
 *
 * The kernels loop over k (16 or 32 in practice; model.c instantiates its
 * per-user step for the common values). On x86-64 with GCC each is
 * compiled three times, for the baseline, x86-64-v3 (AVX2, FMA) and
 * x86-64-v4 (AVX-512: a row of 16 doubles in two registers), and the
 * loader picks one per machine (ifunc), so a portable binary still runs
 * the wide code where it can. The v4 versions fold 14% faster than the v3
 * ones on an AVX-512 machine (docs/benchmarks.md). Elsewhere the
 * attribute is empty and each kernel is compiled once for the target:
 *   - clang: clang 14 emits a target_clones function's resolver only in
 *     the translation units that call it, so a kernel defined in one file
 *     and called from another does not link ("undefined reference to
 *     nnls_solve"); clang builds (the fuzzers among them) get one version,
 *     tuned by -march if the builder wants wide code;
 *   - AddressSanitizer (GCC defines __SANITIZE_ADDRESS__): the resolvers
 *     would run before the sanitizer's runtime is set up;
 *   - NMFD_NO_CLONES defined: one version on request.
 */
#ifndef NMFD_ONLINE_SIMD_H
#define NMFD_ONLINE_SIMD_H

#if defined(__x86_64__) && defined(__gnu_linux__) && defined(__GNUC__) &&      \
    !defined(__clang__) && !defined(__SANITIZE_ADDRESS__) &&                   \
    !defined(NMFD_NO_CLONES)
#define ONLINE_KERNEL                                                          \
    __attribute__((                                                            \
        target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ONLINE_KERNEL
#endif

#endif
