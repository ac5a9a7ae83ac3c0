/* The sandbox ("pause") container of the test platform's real kubelet node.
 *
 * No registry serves registry.k8s.io/pause here, so testbed/node/images.py builds this with
 * `gcc -static` into a FROM-scratch image. It holds the pod's namespaces open: it
 * sleeps in pause(), exits on SIGINT/SIGTERM (the runtime stops sandboxes that way),
 * and, being PID 1 of the pod when the PID namespace is shared, reaps children.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) {
    (void)sig;
    _exit(0);
}

static void on_child(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "-v") == 0) {
        puts("trunkop-pause 1");
        return 0;
    }
    if (getpid() != 1) {
        /* Fine for a test; only a warning, like upstream's pause. */
        fputs("warning: pause should be the first process\n", stderr);
    }
    struct sigaction term = {0};
    term.sa_handler = on_term;
    sigaction(SIGINT, &term, NULL);
    sigaction(SIGTERM, &term, NULL);

    struct sigaction child = {0};
    child.sa_handler = on_child;
    child.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &child, NULL);

    for (;;) {
        pause();
    }
    return 42; /* not reached */
}
