import Foundation
import CSlipwaySpawn
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A command run by a service (git, buildah, skopeo, umoci, runc): its output arrives line by line as it is
/// produced, and cancelling the waiting task kills the whole process tree.
///
/// The child starts in its own session (so its process group is its own), with stdin from
/// /dev/null and stdout/stderr on pipes read by one thread per process (`slipway_spawn`, C: the
/// Glibc module does not expose pipe2, POSIX_SPAWN_SETSID or addchdir_np).
public struct ChildProcess: Sendable {
    public enum Stream: Sendable { case stdout, stderr }

    /// How the process ended.
    public struct Termination: Sendable, Equatable {
        /// Exit status, or nil when a signal ended it.
        public var exitCode: Int32?
        public var signal: Int32?
        public var succeeded: Bool { exitCode == 0 }

        public init(exitCode: Int32?, signal: Int32?) {
            self.exitCode = exitCode
            self.signal = signal
        }
    }

    public struct SpawnError: Error, CustomStringConvertible {
        public var description: String
    }

    public var executable: String
    public var arguments: [String]
    public var environment: [String: String]
    public var workingDirectory: String?
    /// Where the running process is recorded, for cleanup after a crash of the service.
    public var ledger: ProcessLedger?
    /// Longest line handed to `onLine`; longer output is cut into lines of this size.
    public var maxLineBytes = 16 * 1024

    public init(_ executable: String, _ arguments: [String], environment: [String: String] = ChildProcess.baseEnvironment, workingDirectory: String? = nil) {
        self.executable = executable
        self.arguments = arguments
        self.environment = environment
        self.workingDirectory = workingDirectory
    }

    /// A minimal environment: PATH, HOME and locale, nothing of the service's own (no secrets leak
    /// into child processes by inheritance).
    public static let baseEnvironment: [String: String] = {
        let inherited = ProcessInfo.processInfo.environment
        var environment = ["PATH": inherited["PATH"] ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"]
        environment["HOME"] = inherited["HOME"] ?? "/root"
        if let tmp = inherited["TMPDIR"] { environment["TMPDIR"] = tmp }
        return environment
    }()

    /// Runs to the end. `onLine` gets each line of output (without its newline; `\r` also ends a
    /// line, for progress output). Cancellation kills the process tree and then returns its termination.
    public func run(onLine: @escaping @Sendable (Stream, String) -> Void) async throws -> Termination {
        let process = try spawn()
        ledger?.record(process.pid)
        let reaper = ReaperBox()
        let ledger = self.ledger
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Termination, Never>) in
                let thread = Thread {
                    let termination = Self.pump(pid: process.pid, stdout: process.stdout, stderr: process.stderr, maxLineBytes: maxLineBytes, beforeReaping: reaper.markReaping, onLine: onLine)
                    ledger?.remove(process.pid)
                    continuation.resume(returning: termination)
                }
                thread.name = "slipway-child-\(process.pid)"
                thread.start()
            }
        } onCancel: {
            reaper.killUnlessReaped { ProcessTree.kill(root: process.pid) }
        }
    }

    /// Runs to the end and returns its output (both streams, in order) as lines.
    public func output() async throws -> (Termination, [String]) {
        let lines = Mutex<[String]>([])
        let termination = try await run { _, line in lines.withLock { $0.append(line) } }
        return (termination, lines.withLock { $0 })
    }

    /// Kills and reaping exclude each other: once the child is about to be reaped its pid may be
    /// reused, so no signal goes out after that.
    private final class ReaperBox: Sendable {
        private let reaped = Mutex(false)
        /// Runs `kill` unless the child is being or has been reaped.
        func killUnlessReaped(_ kill: () -> Void) {
            reaped.withLock { reaped in if !reaped { kill() } }
        }
        func markReaping() { reaped.withLock { $0 = true } }
    }

    private func spawn() throws -> (pid: pid_t, stdout: Int32, stderr: Int32) {
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        var stdout: Int32 = -1
        var stderr: Int32 = -1
        var result: Int32 = 0
        // ETXTBSY: a script written a moment ago is still open for writing in a child another
        // thread is forking (the descriptor closes at that child's exec). Try again shortly.
        for attempt in 0..<20 {
            result = workingDirectory.withOptionalCString { cwd in
                slipway_spawn(executable, argv, envp, cwd, &pid, &stdout, &stderr)
            }
            guard result == ETXTBSY else { break }
            usleep(useconds_t(1000 * (attempt + 1)))
        }
        guard result == 0 else {
            throw SpawnError(description: "cannot run \(executable): \(String(cString: strerror(result)))")
        }
        return (pid, stdout, stderr)
    }

    /// Reads both pipes until they close, then reaps the process.
    private static func pump(pid: pid_t, stdout: Int32, stderr: Int32, maxLineBytes: Int, beforeReaping: () -> Void, onLine: (Stream, String) -> Void) -> Termination {
        var fds = [pollfd(fd: stdout, events: Int16(POLLIN), revents: 0), pollfd(fd: stderr, events: Int16(POLLIN), revents: 0)]
        var pending: [[UInt8]] = [[], []]
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        func emit(_ index: Int, _ bytes: ArraySlice<UInt8>) {
            onLine(index == 0 ? .stdout : .stderr, String(decoding: bytes, as: UTF8.self))
        }
        func split(_ index: Int) {
            var start = pending[index].startIndex
            for i in pending[index].indices where pending[index][i] == 0x0A || pending[index][i] == 0x0D {
                if i > start { emit(index, pending[index][start..<i]) }
                start = i + 1
            }
            while pending[index].count - start > maxLineBytes {
                emit(index, pending[index][start..<start + maxLineBytes])
                start += maxLineBytes
            }
            pending[index].removeFirst(start)
        }
        var open = 2
        var exited = false
        while open > 0 {
            // Once the child has exited, what is left is drained without waiting: a grandchild that
            // kept the pipes open (a daemon, a detached helper) must not hold the result back.
            let ready = poll(&fds, 2, exited ? 0 : 200)
            if ready < 0 {
                if errno == EINTR { continue }
                break
            }
            if ready == 0 {
                if exited { break }
                var info = siginfo_t()
                if waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info._sifields._sigchld.si_pid == pid {
                    exited = true
                }
                continue
            }
            for index in 0..<2 where fds[index].fd >= 0 && fds[index].revents != 0 {
                let count = buffer.withUnsafeMutableBytes { read(fds[index].fd, $0.baseAddress, $0.count) }
                if count > 0 {
                    pending[index].append(contentsOf: buffer[0..<count])
                    split(index)
                } else if count == 0 || (errno != EINTR && errno != EAGAIN) {
                    if !pending[index].isEmpty { emit(index, pending[index][...]) }
                    pending[index] = []
                    close(fds[index].fd)
                    fds[index].fd = -1
                    open -= 1
                }
            }
        }
        for index in 0..<2 where fds[index].fd >= 0 {
            if !pending[index].isEmpty { emit(index, pending[index][...]) }
            close(fds[index].fd)
        }
        // Wait for the exit without reaping, so the process group id cannot have been reused, then
        // take whatever the child left behind in its group with it.
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) < 0 && errno == EINTR {}
        _ = Glibc.kill(-pid, SIGKILL)
        beforeReaping()
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let signal = status & 0x7f
        return signal == 0 ? Termination(exitCode: (status >> 8) & 0xff, signal: nil) : Termination(exitCode: nil, signal: signal)
    }
}

/// Stops a process and every descendant: all are frozen first (SIGSTOP, so none can fork a new
/// child the pass would miss), then killed. Descendants are found through /proc, so children that
/// started their own session or process group go too.
public enum ProcessTree {
    /// Orphaned descendants become this process's children (PR_SET_CHILD_SUBREAPER), so it can reap
    /// them and read how they ended. Returns false when the kernel refused.
    @discardableResult
    public static func becomeSubreaper() -> Bool {
        slipway_become_subreaper() == 0
    }

    public static func kill(root: pid_t) {
        var frozen: Set<pid_t> = []
        // Freeze until a pass finds nothing new: a child forked before its parent stopped is caught
        // by the next pass.
        for _ in 0..<10 {
            let tree = descendants(of: root).union([root])
            let new = tree.subtracting(frozen)
            if new.isEmpty { break }
            for pid in new { _ = Glibc.kill(pid, SIGSTOP) }
            frozen.formUnion(new)
        }
        _ = Glibc.kill(-root, SIGKILL)
        for pid in frozen { _ = Glibc.kill(pid, SIGKILL) }
    }

    /// Every live process whose ancestry reaches `root`.
    public static func descendants(of root: pid_t) -> Set<pid_t> {
        var children: [pid_t: [pid_t]] = [:]
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        for entry in entries {
            guard let pid = pid_t(entry), let parent = parentPID(of: pid) else { continue }
            children[parent, default: []].append(pid)
        }
        var result: Set<pid_t> = []
        var queue = [root]
        while let next = queue.popLast() {
            for child in children[next] ?? [] where result.insert(child).inserted { queue.append(child) }
        }
        return result
    }

    static func parentPID(of pid: pid_t) -> pid_t? {
        statFields(of: pid, through: 4).flatMap { pid_t($0[1]) }
    }

    /// Fields 3... of /proc/PID/stat ("pid (comm) state ppid ..."), when it has at least `through`
    /// fields. comm may hold spaces and parentheses, so fields start after the last ')'.
    static func statFields(of pid: pid_t, through: Int) -> [Substring]? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > through - 3 ? fields : nil
    }
}

extension Optional where Wrapped == String {
    func withOptionalCString<R>(_ body: (UnsafePointer<CChar>?) -> R) -> R {
        switch self {
        case .some(let string): string.withCString { body($0) }
        case .none: body(nil)
        }
    }
}

/// The processes the builder has started, on disk (`<state>/processes/<pid>`, holding the process's
/// start time), so that a builder restarted after a crash can stop the builds its previous life left
/// running: git and buildah run in their own sessions and outlive a killed builder.
public struct ProcessLedger: Sendable {
    let directory: String

    public init(directory: String) throws {
        self.directory = directory
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    public func record(_ pid: pid_t) {
        guard let started = Self.startTime(of: pid) else { return }
        _ = FileManager.default.createFile(atPath: "\(directory)/\(pid)", contents: Data(started.utf8))
    }

    public func remove(_ pid: pid_t) {
        try? FileManager.default.removeItem(atPath: "\(directory)/\(pid)")
    }

    /// Kills every recorded process tree still alive (the same process: same start time, so a reused
    /// pid is left alone) and forgets them. Returns how many were killed.
    @discardableResult
    public func killLeftovers() -> Int {
        var killed = 0
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            defer { try? FileManager.default.removeItem(atPath: "\(directory)/\(entry)") }
            guard let pid = pid_t(entry),
                  let recorded = try? String(contentsOfFile: "\(directory)/\(entry)", encoding: .utf8),
                  Self.startTime(of: pid) == recorded else { continue }
            ProcessTree.kill(root: pid)
            killed += 1
        }
        return killed
    }

    /// Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot.
    public static func startTime(of pid: pid_t) -> String? {
        ProcessTree.statFields(of: pid, through: 22).map { String($0[19]) }
    }
}
