#!/usr/bin/Rscript
# lme4's InstEval (ETH Zurich lecture evaluations) as an engagement log:
# user = student (s), item = lecturer (d), weight = the rating y (1..5).
# The data carry no dates, only how many semesters back the lecture was
# (lectage 1..6), so the rows go oldest lecture first (lectage descending),
# then by student, then in the data's order; ts is that ordinal, read as
# seconds. No item-name file: lecturers are anonymous numbers.
#
#   apt-get install r-cran-lme4 && data/convert/lme4.R data/
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else "."

data(InstEval, package = "lme4")
x <- InstEval
o <- order(-as.integer(x$lectage), as.integer(as.character(x$s)),
           seq_len(nrow(x)))
write.csv(data.frame(user = as.character(x$s[o]),
                     item = as.character(x$d[o]), weight = x$y[o],
                     ts = seq_along(o)),
          file.path(out, "lme4_insteval.csv"), row.names = FALSE,
          quote = FALSE)
