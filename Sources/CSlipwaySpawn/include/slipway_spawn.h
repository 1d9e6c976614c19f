#ifndef SLIPWAY_SPAWN_H
#define SLIPWAY_SPAWN_H

#include <sys/types.h>

/// Starts `file` (looked up in PATH) with `argv` and `envp` in a new session (so its process group
/// is its own), stdin from /dev/null, stdout and stderr on new pipes (close-on-exec on our side),
/// in `cwd` when not NULL, with default signal dispositions and an empty signal mask.
/// Returns 0 and fills `pid`, `stdout_fd`, `stderr_fd`; or an errno value.
int slipway_spawn(const char *file, char *const argv[], char *const envp[], const char *cwd,
                  pid_t *pid, int *stdout_fd, int *stderr_fd);

/// Starts a long-running `file` detached: in a new session, stdin from /dev/null, stdout and stderr
/// appended to `log_path`. It outlives the caller. Returns 0 and fills `pid`, or an errno value.
int slipway_spawn_daemon(const char *file, char *const argv[], char *const envp[], const char *log_path, pid_t *pid);

/* Makes the calling process the child subreaper of its descendants (prctl is variadic: Swift
   cannot call it). Orphaned descendants — a container's init once runc has exited — become its
   children, so it can read their exit status. Returns 0 or -1 with errno. */
int slipway_become_subreaper(void);

/* Gives back the blocks of the first `length` bytes of `fd` (fallocate with FALLOC_FL_PUNCH_HOLE |
   FALLOC_FL_KEEP_SIZE: the size stays, reads there return zeros). Returns 0 or -1 with errno. */
int slipway_punch_hole(int fd, long long length);

#endif
