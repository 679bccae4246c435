/* ctl.h -- the nmfctl subcommands. Each takes the arguments after its
 * name (argv[0] is the subcommand) and returns an exit code: 0 success,
 * 1 runtime failure, 2 bad usage. */
#ifndef NMFD_CTL_H
#define NMFD_CTL_H

int ctl_broker_main(int argc, char **argv);
int ctl_produce_main(int argc, char **argv);
int ctl_dump_main(int argc, char **argv);
int ctl_gen_main(int argc, char **argv);
int ctl_fit_main(int argc, char **argv);
int ctl_eval_main(int argc, char **argv);
int ctl_inspect_main(int argc, char **argv);
int ctl_recommend_main(int argc, char **argv);
int ctl_rank_main(int argc, char **argv);

#endif
