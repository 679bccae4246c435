#!/usr/bin/Rscript
# dslabs's movielens (the MovieLens "latest small" ratings, 100004 ratings
# of 9066 movies by 671 users, 1995-2016) as an engagement log:
# user = userId, item = movieId, weight = rating (0.5 .. 5), ts =
# timestamp * 1000 (ms since the Unix epoch). Rows in time order (ties by
# user, then movie), as a live stream would bring them. Item names are the
# titles; the 7 movies without one get no name row.
#
#   apt-get install r-cran-dslabs && data/convert/dslabs.R data/
args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[1] else "."

data(movielens, package = "dslabs")
x <- movielens
o <- order(x$timestamp, x$userId, x$movieId)
# Integer ts: 1.4e12 does not fit an R integer, and a double would print
# in scientific notation.
ts <- sprintf("%.0f", as.numeric(x$timestamp[o]) * 1000)
write.csv(data.frame(user = x$userId[o], item = x$movieId[o],
                     weight = x$rating[o], ts = ts),
          file.path(out, "dslabs_movielens.csv"), row.names = FALSE,
          quote = FALSE)
t <- unique(x[!is.na(x$title), c("movieId", "title")])
t <- t[order(t$movieId), ]
write.csv(data.frame(item = t$movieId, name = t$title),
          file.path(out, "dslabs_movielens_items.csv"), row.names = FALSE,
          fileEncoding = "UTF-8")
