import Foundation
import Logging
import SlipwayProcess

#if canImport(Glibc)
import Glibc
#endif

/// The nginx this service owns: one master process started with our configuration file, found again
/// through its pid file after the network service restarts (nginx keeps serving while we are away).
///
/// A reload is graceful (SIGHUP): the master starts workers with the new configuration and the old
/// workers finish the requests they have, close idle connections (HTTP/2: GOAWAY) and exit. Waiting
/// for them is what drains the previous instances of a route.
public struct Nginx: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public var binary: String
    /// The nginx prefix: the configuration, pid file, logs and temp files are under it.
    public var directory: String
    public var configPath: String { directory + "/nginx.conf" }
    var pidPath: String { directory + "/nginx.pid" }
    var errorLogPath: String { directory + "/logs/error.log" }

    public init(binary: String = "/usr/sbin/nginx", directory: String) {
        self.binary = binary
        self.directory = directory
    }

    public func prepareDirectories() throws {
        for sub in ["", "/logs", "/tmp", "/certificates"] {
            try FileManager.default.createDirectory(atPath: directory + sub, withIntermediateDirectories: true)
        }
        chmod(directory + "/certificates", 0o700)
    }

    /// `nginx -t` on a candidate configuration. Throws nginx's own complaint, without its prefix.
    public func test(configuration path: String) async throws {
        let (termination, lines) = try await ChildProcess(binary, ["-t", "-q", "-p", directory, "-c", path]).output()
        guard termination.succeeded else {
            let messages = lines.map { line -> String in
                var text = Substring(line)
                if let range = text.range(of: "nginx: ") { text = text[range.upperBound...] }
                return String(text)
            }.filter { !$0.isEmpty && !$0.contains("configuration file") }
            throw Failure(description: messages.isEmpty ? "nginx -t failed (exit \(termination.exitCode ?? -1))" : messages.joined(separator: "; "))
        }
    }

    /// The running master, if the pid file names a live nginx master.
    public func masterPID() -> pid_t? {
        guard let text = try? String(contentsOfFile: pidPath, encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0,
              Glibc.kill(pid, 0) == 0,
              Self.commandLine(pid).hasPrefix("nginx: master process") else { return nil }
        return pid
    }

    /// Starts the master unless one runs; returns its pid.
    @discardableResult
    public func start() async throws -> pid_t {
        if let pid = masterPID() { return pid }
        let (termination, lines) = try await ChildProcess(binary, ["-p", directory, "-c", configPath]).output()
        guard termination.succeeded else {
            throw Failure(description: "nginx did not start: " + (lines.last(where: { !$0.isEmpty }) ?? "exit \(termination.exitCode ?? -1)"))
        }
        // `daemon on`: the command returns once the master has written its pid file.
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            if let pid = masterPID() { return pid }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw Failure(description: "nginx started but wrote no pid file at \(pidPath): see \(errorLogPath)")
    }

    /// Workers of the running master (those of older configurations that are still finishing included).
    public func workers(of master: pid_t) -> Set<pid_t> {
        ProcessTree.descendants(of: master).filter { Self.commandLine($0).hasPrefix("nginx: worker process") }
    }

    public struct Reload: Sendable {
        /// Workers of the previous configuration still finishing requests.
        public var draining: Set<pid_t>
    }

    /// Sends SIGHUP and returns once workers of the new configuration run. A configuration the master
    /// refuses (a port taken, a certificate unreadable) throws the error it logged.
    public func reload() async throws -> Reload {
        guard let master = masterPID() else {
            try await start()
            return Reload(draining: [])
        }
        let before = workers(of: master)
        let logSize = (try? FileManager.default.attributesOfItem(atPath: errorLogPath)[.size] as? Int) ?? 0
        guard Glibc.kill(master, SIGHUP) == 0 else { throw Failure(description: "cannot signal nginx (pid \(master))") }
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            // Done when workers of the new configuration run and every old one has closed its listening
            // sockets (its title changes to "… is shutting down" as it does): from then on every new
            // connection meets the new configuration.
            let now = workers(of: master)
            if !now.subtracting(before).isEmpty,
               before.allSatisfy({ !now.contains($0) || Self.commandLine($0).contains("shutting down") }) {
                return Reload(draining: before)
            }
            if let error = newErrors(since: logSize) { throw Failure(description: "nginx refused the configuration: \(error)") }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw Failure(description: "nginx did not start workers with the new configuration within 10 s: see \(errorLogPath)")
    }

    /// Waits until the given workers have exited, or the timeout passes. True when all are gone.
    public func drain(_ reload: Reload, timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        var left = reload.draining
        while true {
            left = left.filter { Glibc.kill($0, 0) == 0 && Self.commandLine($0).hasPrefix("nginx: worker process") }
            if left.isEmpty { return true }
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Graceful stop (SIGQUIT): workers finish their requests first.
    public func stop(timeout: Duration = .seconds(30)) async {
        guard let master = masterPID() else { return }
        _ = Glibc.kill(master, SIGQUIT)
        let deadline = ContinuousClock.now + timeout
        while Glibc.kill(master, 0) == 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        if Glibc.kill(master, 0) == 0 { ProcessTree.kill(root: master) }
    }

    /// An [emerg] line logged after `offset` (what nginx logs when it refuses a configuration;
    /// [alert]s come from old workers too, e.g. when their shutdown timeout passes).
    private func newErrors(since offset: Int) -> String? {
        guard let handle = FileHandle(forReadingAtPath: errorLogPath) else { return nil }
        defer { try? handle.close() }
        try? handle.seek(toOffset: UInt64(offset))
        guard let data = try? handle.readToEnd(), let text = String(data: data, encoding: .utf8) else { return nil }
        return text.split(separator: "\n").first { $0.contains("[emerg]") }.map { line in
            line.range(of: "] ").map { String(line[$0.upperBound...]) } ?? String(line)
        }
    }

    static func commandLine(_ pid: pid_t) -> String {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return "" }
        return String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
    }
}
