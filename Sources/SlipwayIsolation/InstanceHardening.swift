import Foundation

/// What the OCI runtime config of an isolated instance (or build step) holds beyond the image's own:
/// its network namespace and a user namespace (root inside is an unprivileged id range outside),
/// Docker's default capabilities without `CAP_NET_RAW`, no new privileges, a seccomp filter
/// equivalent to Docker's default profile, runc's masked and read-only paths, a pids limit, and
/// `/etc/hosts`, `/etc/resolv.conf` from the instance directory.
public enum InstanceHardening {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    /// Whether the kernel offers user namespaces (`sysctl`: user.max_user_namespaces above 0); the
    /// failure names the setting, what it reads, and `alternative` (how to do without).
    public static func checkUserNamespaces(sysctl: String = "/proc/sys/user/max_user_namespaces", alternative: String) throws(Failure) {
        let value = (try? String(contentsOfFile: sysctl, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let value, let count = Int(value), count > 0 else {
            throw Failure("isolation needs user namespaces, which this kernel does not offer (\(sysctl): \(value ?? "missing")); or \(alternative)")
        }
    }

    /// Processes (threads included) one instance may have at once.
    public static let pidsLimit = 1024

    /// Docker's default set, less `CAP_NET_RAW` (no raw sockets, no packet forging) — each only
    /// within the instance's own user namespace.
    public static let capabilities = [
        "CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_MKNOD",
        "CAP_NET_BIND_SERVICE", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
    ]

    /// runc's defaults: kernel interfaces an instance has no business reading or writing.
    public static let maskedPaths = [
        "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
        "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
    ]
    public static let readonlyPaths = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

    /// Applies the hardening to `config` (an OCI runtime config as JSON objects).
    /// `files`: the instance's own `/etc/hosts` and `/etc/resolv.conf`, bind-mounted read-only.
    /// `namespacePath`: a network namespace made beforehand (nil: runc makes one, owned by the
    /// instance's user namespace, and ``EnvironmentNetworks/wire(_:pid:)`` connects it).
    public static func apply(to config: inout [String: Any], namespacePath: String?, hostID: UInt32, files: [(source: String, destination: String)]) {
        var process = config["process"] as? [String: Any] ?? [:]
        process["noNewPrivileges"] = true
        let capabilities: [String: Any] = ["bounding": Self.capabilities, "effective": Self.capabilities, "permitted": Self.capabilities]
        process["capabilities"] = capabilities
        config["process"] = process

        var linux = config["linux"] as? [String: Any] ?? [:]
        var namespaces = (linux["namespaces"] as? [[String: Any]] ?? []).filter { !["network", "user", "cgroup"].contains($0["type"] as? String) }
        namespaces.append(namespacePath.map { ["type": "network", "path": $0] } ?? ["type": "network"])
        namespaces.append(["type": "user"])
        namespaces.append(["type": "cgroup"])
        linux["namespaces"] = namespaces
        let mapping: [[String: Any]] = [["containerID": 0, "hostID": Int(hostID), "size": Int(EnvironmentNetworks.idRange)]]
        linux["uidMappings"] = mapping
        linux["gidMappings"] = mapping
        linux["maskedPaths"] = maskedPaths
        linux["readonlyPaths"] = readonlyPaths
        linux["seccomp"] = seccompProfile()
        var resources = linux["resources"] as? [String: Any] ?? [:]
        resources["pids"] = ["limit": pidsLimit]
        linux["resources"] = resources
        config["linux"] = linux

        var mounts = (config["mounts"] as? [[String: Any]] ?? []).filter {
            !files.map(\.destination).contains($0["destination"] as? String ?? "")
        }
        if namespacePath != nil {
            // sysfs cannot be mounted in a user namespace that does not own the network namespace:
            // the host's is bound read-only instead.
            mounts.removeAll { ($0["destination"] as? String ?? "").hasPrefix("/sys") }
            mounts.append(["destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]])
        }
        for file in files {
            mounts.append(["destination": file.destination, "type": "none", "source": file.source, "options": ["bind", "ro", "nosuid", "noexec", "nodev"]])
        }
        config["mounts"] = mounts
    }

    // MARK: Seccomp

    /// Docker's default profile in effect: every system call an ordinary program makes is allowed,
    /// the rest fail with EPERM — module loading, mount and namespace calls (`mount`, `unshare`,
    /// `setns`, `clone` with namespace flags), kernel keyrings, BPF, perf events, `kexec`, `reboot`,
    /// clock setting, `process_vm_*`, `syslog` stay blocked; `clone3` answers ENOSYS so libcs fall
    /// back to `clone`, which is checked. Unknown names are skipped by runc.
    public static func seccompProfile() -> [String: Any] {
        var rules: [[String: Any]] = [["names": allowed, "action": "SCMP_ACT_ALLOW"]]
        // Any address family but AF_VSOCK (40): no talking to a hypervisor.
        rules.append(["names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [["index": 0, "value": 40, "op": "SCMP_CMP_NE"]]])
        // personality: only the harmless personas (Linux, its 32-bit flavour, no randomisation, query).
        for persona in [0, 8, 0x20000, 0x20008, 0xffff_ffff] {
            rules.append(["names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [["index": 0, "value": persona, "op": "SCMP_CMP_EQ"]]])
        }
        // clone without any CLONE_NEW* flag (namespaces need CAP_SYS_ADMIN, which instances lack).
        rules.append(["names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [["index": 0, "value": 0x7E02_0000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"]]])
        rules.append(["names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38])
        rules.append(["names": architectureCalls, "action": "SCMP_ACT_ALLOW"])
        return ["defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": architectures, "syscalls": rules]
    }

    #if arch(arm64)
    static let architectures = ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    static let architectureCalls = ["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"]
    #else
    static let architectures = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    static let architectureCalls = ["arch_prctl", "modify_ldt"]
    #endif

    /// Grouped by what they do; 32-bit and time64 variants included.
    static let allowed: [String] = files + descriptors + memory + processes + signals + time + network + ipc + information

    static let files = [
        "access", "chdir", "chmod", "chown", "chown32", "close", "close_range", "copy_file_range", "creat", "faccessat", "faccessat2",
        "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown", "fchown32", "fchownat",
        "fdatasync", "fgetxattr", "flistxattr", "flock", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs",
        "fstatfs64", "fsync", "ftruncate", "ftruncate64", "futimesat", "getcwd", "getdents", "getdents64", "getxattr",
        "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "lchown", "lchown32", "lgetxattr", "link", "linkat",
        "listxattr", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "mkdir", "mkdirat", "mknod",
        "mknodat", "newfstatat", "open", "openat", "openat2", "pread64", "preadv", "preadv2", "pwrite64", "pwritev", "pwritev2", "read",
        "readahead", "readlink", "readlinkat", "readv", "removexattr", "rename", "renameat", "renameat2", "rmdir", "sendfile",
        "sendfile64", "setxattr", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
        "sync_file_range", "syncfs", "tee", "truncate", "truncate64", "umask", "unlink", "unlinkat", "utime", "utimensat",
        "utimensat_time64", "utimes", "vmsplice", "write", "writev", "io_cancel", "io_destroy", "io_getevents", "io_pgetevents",
        "io_pgetevents_time64", "io_setup", "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup",
    ]
    static let descriptors = [
        "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
        "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "fcntl", "fcntl64", "ioctl", "memfd_create", "memfd_secret",
        "pipe", "pipe2", "poll", "ppoll", "ppoll_time64", "pselect6", "pselect6_time64", "select", "_newselect", "signalfd",
        "signalfd4", "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
    ]
    static let memory = [
        "brk", "madvise", "membarrier", "mincore", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mremap", "msync",
        "munlock", "munlockall", "munmap", "pkey_alloc", "pkey_free", "pkey_mprotect", "remap_file_pages",
    ]
    static let processes = [
        "capget", "capset", "execve", "execveat", "exit", "exit_group", "fork", "vfork", "wait4", "waitid", "waitpid", "getpgid",
        "getpgrp", "getpid", "getppid", "getpriority", "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit",
        "get_robust_list", "getrusage", "getsid", "get_thread_area", "gettid", "getuid", "getuid32", "geteuid", "geteuid32", "getgid",
        "getgid32", "getegid", "getegid32", "getgroups", "getgroups32", "ioprio_get", "ioprio_set", "prctl", "prlimit64",
        "process_mrelease", "pidfd_open", "pidfd_send_signal", "rseq", "sched_getaffinity", "sched_getattr", "sched_getparam",
        "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
        "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield",
        "seccomp", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setpgid",
        "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
        "setrlimit", "set_robust_list", "setsid", "set_thread_area", "set_tid_address", "setuid", "setuid32", "ugetrlimit",
        "futex", "futex_time64", "futex_waitv", "restart_syscall", "landlock_add_rule", "landlock_create_ruleset",
        "landlock_restrict_self", "ptrace",
    ]
    static let signals = [
        "alarm", "kill", "pause", "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
        "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sigaltstack", "sigprocmask", "sigreturn",
        "tgkill", "tkill",
    ]
    static let time = [
        "adjtimex", "clock_adjtime", "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64",
        "clock_nanosleep", "clock_nanosleep_time64", "getitimer", "gettimeofday", "nanosleep", "setitimer", "time", "timer_create",
        "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64", "times",
    ]
    static let network = [
        "accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen", "recv", "recvfrom", "recvmmsg",
        "recvmmsg_time64", "recvmsg", "send", "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown", "socketcall", "socketpair",
    ]
    static let ipc = [
        "ipc", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend",
        "mq_timedsend_time64", "mq_unlink", "msgctl", "msgget", "msgrcv", "msgsnd", "semctl", "semget", "semop", "semtimedop",
        "semtimedop_time64", "shmat", "shmctl", "shmdt", "shmget",
    ]
    static let information = ["getcpu", "getrandom", "sysinfo", "uname"]
}
