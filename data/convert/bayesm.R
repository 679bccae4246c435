#!/usr/bin/Rscript
# bayesm's margarine and Scotch data as engagement logs.
#
#   margarine$choicePrice: one row per shopping trip (hhid, choice, prices);
#     bayesm_margarine.csv: user = household (hhid), item = the brand chosen
#     (1..10, the order of the price columns), weight 1, one row per trip.
#   Scotch: 2218 respondents x 21 brands, 1 = drank it last year;
#     bayesm_scotch.csv: user = respondent (row), item = brand (column),
#     weight 1, one row per 1.
# ts is the row's ordinal (1, 2, ...), which nmfd reads as seconds.
#
#   apt-get install r-cran-bayesm && data/convert/bayesm.R data/
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else "."
ev <- function(df, name)
    write.csv(df, file.path(out, paste0(name, ".csv")), row.names = FALSE,
              quote = FALSE)
items <- function(names, name)
    write.csv(data.frame(item = seq_along(names), name = names),
              file.path(out, paste0(name, "_items.csv")), row.names = FALSE)

data(margarine, package = "bayesm")
cp <- margarine$choicePrice
ev(data.frame(user = cp$hhid, item = cp$choice, weight = 1,
              ts = seq_len(nrow(cp))), "bayesm_margarine")
items(sub("^P", "", names(cp)[3:12]), "bayesm_margarine")

data(Scotch, package = "bayesm")
m <- as.matrix(Scotch)
# which() on the transpose walks respondent by respondent, brands in order.
idx <- which(t(m) != 0, arr.ind = TRUE)
ev(data.frame(user = idx[, 2], item = idx[, 1], weight = 1,
              ts = seq_len(nrow(idx))), "bayesm_scotch")
items(colnames(m), "bayesm_scotch")
