/* proctitle.h: the process title ("tenkd: master (name)", "tenkd: worker 3 (name)"). */
#ifndef TK_PROCTITLE_H
#define TK_PROCTITLE_H

/* Call first thing in main(): moves the environment and argv strings away
 * from the original argv area, so tk_proctitle_set() can overwrite it
 * (what ps shows is that memory, not the prctl name). argv[i] stay valid. */
void tk_proctitle_init(int argc, char **argv);
void tk_proctitle_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
