/* test_csv.c -- the CSV reader: every rule of csv.h and every malformed
 * line a user can write, each reported with its line and skipped. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "csv.h"

static char tmp_path[64];

static const char *write_tmp(const char *text, size_t len)
{
    strcpy(tmp_path, "/tmp/nmfd-test-csv-XXXXXX");
    int fd = mkstemp(tmp_path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
    return tmp_path;
}

static const char *tmp(const char *text)
{
    return write_tmp(text, strlen(text));
}

static void cleanup(void)
{
    if (tmp_path[0])
        unlink(tmp_path);
    tmp_path[0] = '\0';
}

TestSuite(csv, .fini = cleanup);

static struct csv_reader *open_ok(const char *text)
{
    char err[256] = "";
    struct csv_reader *r = csv_open(tmp(text), err, sizeof(err));
    cr_assert_not_null(r, "csv_open failed: %s", err);
    return r;
}

/* Opening must fail; returns the message. */
static void open_fails(const char *text, int want_errno, const char *needle)
{
    static char err[256];
    err[0] = '\0';
    errno = 0;
    struct csv_reader *r = csv_open(tmp(text), err, sizeof(err));
    cr_assert_null(r);
    cr_assert_eq(errno, want_errno, "errno %d", errno);
    cr_assert(strstr(err, needle), "message '%s' lacks '%s'", err, needle);
    cr_assert(strstr(err, tmp_path) == err, "message '%s' lacks the path", err);
}

/* The single data line must be rejected with a message naming line 2. */
static void line_rejected(const char *text, const char *needle)
{
    struct csv_reader *r = open_ok(text);
    struct csv_row row;
    char want[128];

    cr_assert_eq(csv_next(r, &row), -EINVAL, "'%s' was accepted", text);
    snprintf(want, sizeof(want), "%s:2: ", tmp_path);
    cr_assert(strstr(csv_error(r), want) == csv_error(r),
              "message '%s' does not start with '%s'", csv_error(r), want);
    cr_assert(strstr(csv_error(r), needle), "message '%s' lacks '%s'",
              csv_error(r), needle);
    /* The reader moved past the bad line and goes on. */
    cr_assert_eq(csv_next(r, &row), 1, "%s", csv_error(r));
    cr_assert_str_eq(row.user, "ok");
    cr_assert_eq(row.line, 3);
    cr_assert_eq(csv_next(r, &row), 0);
    csv_close(r);
}

Test(csv, reads_rows)
{
    struct csv_reader *r = open_ok("user,item,weight,ts\n"
                                   "u1,i1,1,1\n"
                                   "u2,i2,2.5,1700000000000\n");
    struct csv_row row;

    cr_assert_eq(csv_next(r, &row), 1);
    cr_assert_eq(row.user_len, 2);
    cr_assert_eq(memcmp(row.user, "u1", 2), 0);
    cr_assert_str_eq(row.item, "i1");
    cr_assert_float_eq(row.weight, 1.0, 1e-12);
    cr_assert_eq(row.ts, 1000); /* below 1e11: seconds */
    cr_assert(row.ts_given);
    cr_assert_eq(row.line, 2);
    cr_assert_str_eq(row.type, "");
    cr_assert_eq(csv_next(r, &row), 1);
    cr_assert_str_eq(row.user, "u2");
    cr_assert_float_eq(row.weight, 2.5, 1e-12);
    cr_assert_eq(row.ts, 1700000000000LL); /* milliseconds */
    cr_assert_eq(csv_next(r, &row), 0);
    cr_assert_eq(csv_next(r, &row), 0, "EOF is sticky");
    cr_assert_str_eq(csv_error(r), "");
    csv_close(r);
}

Test(csv, ts_rule_boundary)
{
    int64_t ms;
    cr_assert_eq(csv_ts_to_ms(0, &ms), 0);
    cr_assert_eq(ms, 0);
    cr_assert_eq(csv_ts_to_ms(99999999999LL, &ms), 0);
    cr_assert_eq(ms, 99999999999000LL);
    cr_assert_eq(csv_ts_to_ms(100000000000LL, &ms), 0);
    cr_assert_eq(ms, 100000000000LL);
    cr_assert_eq(csv_ts_to_ms(-1, &ms), -EINVAL);
}

Test(csv, header_any_order_optional_columns)
{
    struct csv_reader *r = open_ok("ts,item,user\n5,a,b\n");
    struct csv_row row;
    cr_assert_eq(csv_next(r, &row), 1);
    cr_assert_str_eq(row.user, "b");
    cr_assert_str_eq(row.item, "a");
    cr_assert_float_eq(row.weight, 1.0, 1e-12);
    cr_assert_eq(row.ts, 5000);
    csv_close(r);

    r = open_ok("User,Item,Type\nx,y,click\n");
    cr_assert_eq(csv_next(r, &row), 1);
    cr_assert_str_eq(row.type, "click");
    cr_assert_eq(row.type_len, 5);
    cr_assert_eq(row.ts, 0);
    cr_assert_not(row.ts_given);
    csv_close(r);
}

Test(csv, empty_weight_and_ts)
{
    struct csv_reader *r = open_ok("user,item,weight,ts\n"
                                   "a,b,,\n"
                                   "a,b,3,7\n"
                                   "a,c,,\n");
    struct csv_row row;
    cr_assert_eq(csv_next(r, &row), 1);
    cr_assert_float_eq(row.weight, 1.0, 1e-12);
    cr_assert_eq(row.ts, 0);
    cr_assert_not(row.ts_given);
    cr_assert_eq(csv_next(r, &row), 1);
    cr_assert_eq(row.ts, 7000);
    cr_assert_eq(csv_next(r, &row), 1);
    cr_assert_eq(row.ts, 7000, "empty ts carries the previous one");
    cr_assert_not(row.ts_given);
    csv_close(r);
}

Test(csv, quotes)
{
    struct csv_reader *r = open_ok("\"user\",\"item\",weight,ts\n"
                                   "\"a,b\",\"say \"\"hi\"\"\",\"2\",1\n"
                                   "\"\"\"\",x,1,1\n");
    struct csv_row row;
    cr_assert_eq(csv_next(r, &row), 1, "%s", csv_error(r));
    cr_assert_str_eq(row.user, "a,b");
    cr_assert_eq(row.user_len, 3);
    cr_assert_str_eq(row.item, "say \"hi\"");
    cr_assert_eq(row.item_len, 8);
    cr_assert_float_eq(row.weight, 2.0, 1e-12);
    cr_assert_eq(csv_next(r, &row), 1, "%s", csv_error(r));
    cr_assert_str_eq(row.user, "\"");
    csv_close(r);
}

Test(csv, crlf_bom_blank_lines_no_final_newline)
{
    struct csv_reader *r = open_ok("\xef\xbb\xbfuser,item,weight,ts\r\n"
                                   "a,b,1,2\r\n"
                                   "\r\n"
                                   "\n"
                                   "c,d,3,4");
    struct csv_row row;
    cr_assert_eq(csv_next(r, &row), 1, "%s", csv_error(r));
    cr_assert_str_eq(row.user, "a");
    cr_assert_eq(row.ts, 2000, "CR must not stick to ts");
    cr_assert_eq(csv_next(r, &row), 1, "%s", csv_error(r));
    cr_assert_str_eq(row.user, "c");
    cr_assert_eq(row.ts, 4000);
    cr_assert_eq(row.line, 5);
    cr_assert_eq(csv_next(r, &row), 0);
    csv_close(r);
}

Test(csv, weight_forms)
{
    struct csv_reader *r = open_ok("user,item,weight,ts\n"
                                   "a,b,0,1\n"
                                   "a,b,1e3,1\n"
                                   "a,b, 0.25 ,1\n"
                                   "a,b,123456789012345678,1\n");
    struct csv_row row;
    double want[] = {0, 1000, 0.25, 123456789012345678.0};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(csv_next(r, &row), 1, "%s", csv_error(r));
        cr_assert_float_eq(row.weight, want[i], 1e-9 * (1 + want[i]));
    }
    csv_close(r);
}

Test(csv, missing_field)
{
    line_rejected("user,item,weight,ts\na,b,1\nok,x,1,1\n",
                  "expected 4 fields as in the header, got 3");
}

Test(csv, extra_field)
{
    line_rejected("user,item,weight,ts\na,b,1,1,9\nok,x,1,1\n", "got 5");
}

Test(csv, empty_user)
{
    line_rejected("user,item,weight,ts\n,b,1,1\nok,x,1,1\n", "empty user");
}

Test(csv, empty_item)
{
    line_rejected("user,item,weight,ts\na,,1,1\nok,x,1,1\n", "empty item");
}

Test(csv, long_id)
{
    char text[1024];
    char id[CSV_ID_MAX + 2];
    memset(id, 'x', CSV_ID_MAX + 1);
    id[CSV_ID_MAX + 1] = '\0';
    snprintf(text, sizeof(text), "user,item,weight,ts\n%s,b,1,1\nok,x,1,1\n",
             id);
    line_rejected(text, "user longer than 256 bytes");
}

Test(csv, id_of_max_length_accepted)
{
    char text[1024];
    char id[CSV_ID_MAX + 1];
    memset(id, 'y', CSV_ID_MAX);
    id[CSV_ID_MAX] = '\0';
    snprintf(text, sizeof(text), "user,item\n%s,b\n", id);
    struct csv_reader *r = open_ok(text);
    struct csv_row row;
    cr_assert_eq(csv_next(r, &row), 1, "%s", csv_error(r));
    cr_assert_eq(row.user_len, CSV_ID_MAX);
    csv_close(r);
}

Test(csv, bad_weights)
{
    const char *bad[] = {"abc", "-1",   "1x",    "nan",
                         "inf", "-inf", "1e999", "\"\"\"\""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text),
                 "user,item,weight,ts\na,b,%s,1\nok,x,1,1\n", bad[i]);
        line_rejected(text, "bad weight");
        cleanup();
    }
}

Test(csv, bad_ts)
{
    const char *bad[] = {"x",   "-5",  "1.5",
                         "1e3", "12a", "99999999999999999999"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text),
                 "user,item,weight,ts\na,b,1,%s\nok,x,1,1\n", bad[i]);
        line_rejected(text, "bad ts");
        cleanup();
    }
}

Test(csv, bad_quotes)
{
    line_rejected("user,item,weight,ts\n\"a,b,1,1\nok,x,1,1\n",
                  "unterminated quoted field");
    cleanup();
    line_rejected("user,item,weight,ts\n\"a\"x,b,1,1\nok,x,1,1\n",
                  "text after a closing quote");
    cleanup();
    line_rejected("user,item,weight,ts\na\"b,b,1,1\nok,x,1,1\n",
                  "quote inside an unquoted field");
}

Test(csv, too_many_fields)
{
    line_rejected("user,item\na,b,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16\n"
                  "ok,x\n",
                  "too many fields");
}

Test(csv, line_too_long_is_skipped)
{
    size_t n = 400 * 1024;
    char *text = malloc(n + 64);
    strcpy(text, "user,item\n");
    size_t off = strlen(text);
    memset(text + off, 'z', n);
    off += n;
    strcpy(text + off, ",b\nok,x\n");
    struct csv_reader *r;
    char err[256];
    r = csv_open(write_tmp(text, strlen(text)), err, sizeof(err));
    free(text);
    cr_assert_not_null(r, "%s", err);
    struct csv_row row;
    cr_assert_eq(csv_next(r, &row), -EINVAL);
    cr_assert(strstr(csv_error(r), ":2: line longer than"), "%s", csv_error(r));
    cr_assert_eq(csv_next(r, &row), 1, "%s", csv_error(r));
    cr_assert_str_eq(row.user, "ok");
    cr_assert_eq(row.line, 3);
    cr_assert_eq(csv_next(r, &row), 0);
    csv_close(r);
}

Test(csv, empty_file)
{
    open_fails("", EINVAL, ": empty file, expected a header line");
}

Test(csv, no_header)
{
    open_fails("2100016,1,1,1\n2100016,1,1,2\n", EINVAL,
               ":1: unknown column '2100016' in the header");
}

Test(csv, header_without_item)
{
    open_fails("user,weight\n", EINVAL, ":1: the header has no 'item' column");
}

Test(csv, header_duplicate)
{
    open_fails("user,item,user\n", EINVAL, "column 'user' twice");
}

Test(csv, header_only)
{
    struct csv_reader *r = open_ok("user,item,weight,ts\n");
    struct csv_row row;
    cr_assert_eq(csv_next(r, &row), 0);
    csv_close(r);
}

Test(csv, missing_file)
{
    char err[256];
    errno = 0;
    cr_assert_null(csv_open("/nonexistent/x.csv", err, sizeof(err)));
    cr_assert_eq(errno, ENOENT);
    cr_assert_str_eq(err, "/nonexistent/x.csv: No such file or directory");
}

/* Many rows across buffer refills: every line comes back intact. */
Test(csv, large_file_across_buffers)
{
    size_t rows = 200000;
    char *text = malloc(rows * 40 + 64);
    size_t off = (size_t)sprintf(text, "user,item,weight,ts\n");
    for (size_t i = 0; i < rows; i++)
        off += (size_t)sprintf(text + off, "user%zu,item%zu,%zu,%zu\n", i,
                               i % 97, i % 5, i + 1);
    char err[256];
    struct csv_reader *r = csv_open(write_tmp(text, off), err, sizeof(err));
    free(text);
    cr_assert_not_null(r, "%s", err);
    struct csv_row row;
    size_t i = 0;
    int rc;
    while ((rc = csv_next(r, &row)) == 1) {
        char want[32];
        snprintf(want, sizeof(want), "user%zu", i);
        cr_assert_str_eq(row.user, want);
        cr_assert_eq(row.weight, (double)(i % 5));
        cr_assert_eq(row.ts, (int64_t)(i + 1) * 1000);
        cr_assert_eq(row.line, i + 2);
        i++;
    }
    cr_assert_eq(rc, 0);
    cr_assert_eq(i, rows);
    csv_close(r);
}

Test(csv, stdin_dash)
{
    const char *path = tmp("user,item\nq,w\n");
    FILE *f = freopen(path, "r", stdin);
    cr_assert_not_null(f);
    char err[256];
    struct csv_reader *r = csv_open("-", err, sizeof(err));
    cr_assert_not_null(r, "%s", err);
    cr_assert_str_eq(csv_path(r), "-");
    struct csv_row row;
    cr_assert_eq(csv_next(r, &row), 1);
    cr_assert_str_eq(row.user, "q");
    cr_assert_eq(csv_next(r, &row), 0);
    csv_destroy(&r);
    cr_assert_null(r);
}

struct names {
    int n;
    char item[8][32];
    char name[8][32];
};

static int collect(void *ctx, const char *item, size_t ilen, const char *name,
                   size_t nlen)
{
    struct names *nm = ctx;
    cr_assert_eq(strlen(item), ilen);
    cr_assert_eq(strlen(name), nlen);
    snprintf(nm->item[nm->n], 32, "%s", item);
    snprintf(nm->name[nm->n], 32, "%s", name);
    nm->n++;
    return 0;
}

Test(csv, item_names_quoted)
{
    struct names nm = {0};
    char err[256];
    int rc = csv_item_names(tmp("\"item\",\"name\"\r\n1,\"Pk_Stk\"\n"
                                "2,\"Dewar\"\"s, White\"\n3,plain\n"),
                            collect, &nm, err, sizeof(err));
    cr_assert_eq(rc, 0, "%s", err);
    cr_assert_eq(nm.n, 3);
    cr_assert_str_eq(nm.item[0], "1");
    cr_assert_str_eq(nm.name[0], "Pk_Stk");
    cr_assert_str_eq(nm.name[1], "Dewar\"s, White");
    cr_assert_str_eq(nm.name[2], "plain");
}

static int stop_at_two(void *ctx, const char *item, size_t ilen,
                       const char *name, size_t nlen)
{
    int *n = ctx;
    return ++*n == 2 ? 42 : 0;
}

Test(csv, item_names_callback_stops)
{
    int n = 0;
    char err[256];
    cr_assert_eq(csv_item_names(tmp("item,name\n1,a\n2,b\n3,c\n"), stop_at_two,
                                &n, err, sizeof(err)),
                 42);
    cr_assert_eq(n, 2);
}

Test(csv, item_names_errors)
{
    struct names nm = {0};
    char err[256];
    cr_assert_eq(csv_item_names(tmp("item,name\n1,a\n,b\n"), collect, &nm, err,
                                sizeof(err)),
                 -EINVAL);
    cr_assert(strstr(err, ":3: empty item"), "%s", err);
    cleanup();
    cr_assert_eq(
        csv_item_names(tmp("item,name\n1\n"), collect, &nm, err, sizeof(err)),
        -EINVAL);
    cr_assert(strstr(err, ":2: expected 2 fields"), "%s", err);
    cleanup();
    cr_assert_eq(csv_item_names(tmp("user,item,weight,ts\n"), collect, &nm, err,
                                sizeof(err)),
                 -EINVAL);
    cr_assert(strstr(err, ":1: unknown column 'user'"), "%s", err);
    cr_assert_eq(csv_item_names("/nonexistent/items.csv", collect, &nm, err,
                                sizeof(err)),
                 -ENOENT);
}

/* Lines of a file (none of data/ has a blank one), counted apart from the
 * reader. */
static size_t count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    size_t n = 0;
    int c, prev = '\n';
    while ((c = getc(f)) != EOF) {
        if (c == '\n')
            n++;
        prev = c;
    }
    fclose(f);
    return n + (prev != '\n');
}

static int count_name(void *ctx, const char *item, size_t ilen,
                      const char *name, size_t nlen)
{
    (*(size_t *)ctx)++;
    return 0;
}

/* Every CSV of the repository's data/ reads without a single reject: each
 * line of an event file is one row, each of an item-name file one name,
 * and the event files this project's demo, tests and benchmarks name are
 * all there. */
Test(csv, data_reads_clean, .timeout = 120)
{
    const char *dir = getenv("NMFD_DATA");
    if (!dir)
        cr_skip_test("NMFD_DATA not set");
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "%s: %s", dir, strerror(errno));
    size_t files = 0, event_files = 0;
    bool margarine = false, movielens = false, glibc = false;
    struct dirent *e;
    char path[4096], err[256];
    while ((e = readdir(d))) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".csv"))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        size_t lines = count_lines(path);
        files++;
        if (len > 10 && !strcmp(e->d_name + len - 10, "_items.csv")) {
            size_t names = 0;
            cr_assert_eq(
                csv_item_names(path, count_name, &names, err, sizeof(err)), 0,
                "%s", err);
            /* A quoted name never spans lines (csv.h). */
            cr_assert_eq(names + 1, lines, "%s: %zu names, %zu lines", path,
                         names, lines);
            continue;
        }
        event_files++;
        struct csv_reader *r = csv_open(path, err, sizeof(err));
        cr_assert_not_null(r, "%s", err);
        struct csv_row row;
        int rc;
        size_t n = 0;
        while ((rc = csv_next(r, &row)) == 1) {
            cr_assert(row.ts_given, "%s:%llu: no ts", path,
                      (unsigned long long)row.line);
            n++;
        }
        cr_assert_eq(rc, 0, "%s", csv_error(r));
        cr_assert_eq(n + 1, lines, "%s: %zu rows, %zu lines", path, n, lines);
        if (!strcmp(e->d_name, "bayesm_margarine.csv")) {
            margarine = true;
            cr_assert_eq(n, 4470);
            cr_assert_eq(row.ts, 4470000); /* ordinals read as seconds */
        } else if (!strcmp(e->d_name, "dslabs_movielens.csv")) {
            movielens = true;
            cr_assert_eq(n, 100004);
            cr_assert_eq(row.ts, 1476640644000LL); /* 2016-10-16, in ms */
        } else if (!strcmp(e->d_name, "glibc_changelog.csv")) {
            glibc = true;
            cr_assert_eq(row.ts, 1659052800000LL); /* 2022-07-29 */
        }
        csv_close(r);
    }
    closedir(d);
    cr_assert(margarine && movielens && glibc, "%s: a data set is missing",
              dir);
    cr_assert_geq(event_files, 8);
    cr_assert_geq(files, 15);
}

/* Progress: the bytes read into rows so far, up to the file's size at the
 * end; the size is known for a regular file only (-1 for a pipe). */
Test(csv, offset_and_size_for_progress)
{
    const char *text = "user,item\na,x\nbb,yy\n";
    struct csv_reader *r = open_ok(text);
    struct csv_row row;
    cr_assert_eq(csv_size(r), (int64_t)strlen(text));
    cr_assert_eq(csv_next(r, &row), 1);
    cr_assert_eq(csv_offset(r), strlen("user,item\na,x\n"));
    cr_assert_eq(csv_next(r, &row), 1);
    cr_assert_eq(csv_offset(r), strlen(text));
    cr_assert_eq(csv_next(r, &row), 0);
    cr_assert_eq(csv_offset(r), strlen(text));
    csv_close(r);

    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    cr_assert_eq(write(fds[1], text, strlen(text)), (ssize_t)strlen(text));
    close(fds[1]);
    int saved = dup(STDIN_FILENO);
    cr_assert(saved >= 0);
    cr_assert_eq(dup2(fds[0], STDIN_FILENO), STDIN_FILENO);
    close(fds[0]);
    char err[256] = "";
    r = csv_open("-", err, sizeof(err));
    cr_assert_not_null(r, "%s", err);
    cr_assert_eq(csv_size(r), -1);
    while (csv_next(r, &row) == 1)
        ;
    cr_assert_eq(csv_offset(r), strlen(text));
    csv_close(r);
    dup2(saved, STDIN_FILENO);
    close(saved);
}
