#!/usr/bin/Rscript
# kernlab's ticdata (the CoIL 2000 insurance data, 9822 customers) as an
# engagement log: user = customer (row), item = one of the 21 "number of
# policies" columns (AWAPART .. ABYSTAND) or CARAVAN (item 22, 1 when the
# customer holds a caravan policy), weight = the number of policies, one
# row per non-zero count. ts is the row's ordinal, read as seconds.
#
#   apt-get install r-cran-kernlab && data/convert/kernlab.R data/
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else "."

data(ticdata, package = "kernlab")
t2 <- ticdata[, 65:86]
m <- sapply(t2, function(c)
    if (is.factor(c)) as.integer(c) - 1L else as.integer(c))
idx <- which(t(m) != 0, arr.ind = TRUE)
write.csv(data.frame(user = idx[, 2], item = idx[, 1], weight = t(m)[idx],
                     ts = seq_len(nrow(idx))),
          file.path(out, "kernlab_ticdata.csv"), row.names = FALSE,
          quote = FALSE)
write.csv(data.frame(item = seq_len(ncol(m)), name = colnames(m)),
          file.path(out, "kernlab_ticdata_items.csv"), row.names = FALSE)
