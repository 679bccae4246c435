#!/usr/bin/Rscript
# FactoMineR's hobbies survey (8403 people, 18 hobbies yes/no) as an
# engagement log: user = respondent (row), item = one of the first 17
# hobby columns (Reading .. Fishing; TV is a 0-4 scale, not yes/no, and the
# demographic columns are left out), weight 1, one row per "1". A missing
# answer is no row. ts is the row's ordinal, read as seconds.
#
#   apt-get install r-cran-factominer && data/convert/factominer.R data/
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else "."

data(hobbies, package = "FactoMineR")
h <- hobbies[, 1:17]
m <- sapply(h, function(c) as.integer(as.character(c)))
idx <- which(t(m) != 0, arr.ind = TRUE)
write.csv(data.frame(user = idx[, 2], item = idx[, 1], weight = 1,
                     ts = seq_len(nrow(idx))),
          file.path(out, "factominer_hobbies.csv"), row.names = FALSE,
          quote = FALSE)
write.csv(data.frame(item = seq_len(ncol(m)), name = colnames(h)),
          file.path(out, "factominer_hobbies_items.csv"), row.names = FALSE)
