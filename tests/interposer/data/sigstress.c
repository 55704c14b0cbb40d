/* Signal handlers that open /cvmfs files while the main loop does the same: the handler runs
 * while the interrupted thread is inside the tracer's stub (nesting), 1000 x per second. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
static const char *path;
static volatile long handled, bad;
static char expect[64];
static void on_alarm(int sig) {
    (void)sig;
    char buf[64] = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0 || read(fd, buf, 16) != 16 || memcmp(buf, expect, 16) != 0) bad++;
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) != 0) bad++;
    if (fd >= 0) close(fd);
    handled++;
}
int main(int argc, char **argv) {
    path = argv[1];
    int n = atoi(argv[2]);
    int fd = open(path, O_RDONLY);
    if (fd < 0 || read(fd, expect, 16) != 16) { perror("open"); return 2; }
    close(fd);
    struct sigaction sa; memset(&sa, 0, sizeof sa); sa.sa_handler = on_alarm; sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 1000}, {0, 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
    for (int i = 0; i < n; i++) {
        struct stat st;
        char buf[64] = {0};
        if (stat(path, &st) != 0) bad++;
        int f = open(path, O_RDONLY);
        if (f < 0 || read(f, buf, 16) != 16 || memcmp(buf, expect, 16) != 0) bad++;
        if (f >= 0) close(f);
    }
    it.it_value.tv_usec = 0; it.it_interval.tv_usec = 0; setitimer(ITIMER_REAL, &it, NULL);
    printf("handled=%ld bad=%ld\n", handled, bad);
    return bad != 0;
}
