/* The pod sandbox's process for the test world's real node: sleeps until SIGTERM or SIGINT and
 * reaps the children that are re-parented to it (it is PID 1 of the pod). Built static for a
 * FROM scratch image. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction term = {.sa_handler = stop}, child = {.sa_handler = reap};
  sigaction(SIGTERM, &term, NULL);
  sigaction(SIGINT, &term, NULL);
  child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  sigaction(SIGCHLD, &child, NULL);
  for (;;) pause();
  return 0;
}
