import Crypto
import Foundation
import SlipwayProcess
import SlipwayServiceKit

#if canImport(Glibc)
import Glibc
#endif

/// The local driver's container runtime: images pulled from a registry into one OCI image layout
/// (layers cached by digest, shared by every image), unpacked into a bundle per instance with
/// `umoci` (whiteouts and ownership handled), and run detached by `runc` under its own state root,
/// so a restarted cluster service finds its instances again (`runc list`).
///
/// Instances share the host's network namespace and listen on the loopback port they get in
/// `PORT`; their stdout and stderr go to files in the instance directory, which outlive this
/// process (the container keeps them open).
public final class LocalRuntime: Sendable {
    /// What one instance runs.
    public struct InstanceSpec: Sendable, Equatable {
        /// Lower-case letters, digits, '.', '_', '-'; at most 64, starting with a letter or digit.
        public var id: String
        /// host/repository@sha256:… (or :tag).
        public var image: String
        /// Reach the image's registry over plain HTTP.
        public var insecureRegistry = false
        /// Environment variables and secrets (PORT is set from ``port``).
        public var environment: [String: String] = [:]
        public var port: Int
        /// Replaces the image's command when set.
        public var command: [String]?
        public var memoryMiB: Int?
        public var cpuMillicores: Int?
        public var readOnlyRootfs = false

        public init(id: String, image: String, port: Int) {
            self.id = id
            self.image = image
            self.port = port
        }
    }

    public enum Status: String, Sendable {
        case creating, created, running, paused, stopped
    }

    public struct InstanceState: Sendable, Equatable {
        public var id: String
        public var status: Status
        /// The container's init process (0 once stopped).
        public var pid: Int32
    }

    public struct Failure: Error, CustomStringConvertible, Equatable {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    public let directory: String
    var layout: String { directory + "/images" }
    var runcRoot: String { directory + "/runc" }
    /// Credentials for pulls (containers-auth.json: each registry's own, sent to it alone); nil: anonymous.
    public let registryAuthFile: String?

    public init(directory: String, registryAuthFile: String? = nil) throws {
        self.directory = directory
        self.registryAuthFile = registryAuthFile
        for path in [directory + "/images", directory + "/instances", directory + "/runc"] {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
    }

    public func instanceDirectory(_ id: String) -> String { directory + "/instances/" + id }
    public func stdoutPath(_ id: String) -> String { instanceDirectory(id) + "/stdout.log" }
    public func stderrPath(_ id: String) -> String { instanceDirectory(id) + "/stderr.log" }

    // MARK: Images

    /// Copies the image into the layout (blobs already there are not fetched again); returns its
    /// name in the layout.
    @discardableResult
    public func pull(_ image: String, insecure: Bool) async throws -> String {
        let name = Self.layoutName(image)
        var arguments = ["copy", "--quiet"]
        if insecure { arguments.append("--src-tls-verify=false") }
        if let registryAuthFile { arguments += ["--src-authfile", registryAuthFile] }
        arguments += ["docker://\(Self.pullReference(image))", "oci:\(layout):\(name)"]
        try await tool("/usr/bin/skopeo", arguments, "pulling \(image)")
        return name
    }

    /// skopeo takes a tag or a digest, not both: `host/repo:tag@sha256:…` is pulled by its digest.
    static func pullReference(_ image: String) -> String {
        guard let at = image.firstIndex(of: "@") else { return image }
        var name = String(image[..<at])
        let lastSlash = name.lastIndex(of: "/") ?? name.startIndex
        if let colon = name[lastSlash...].lastIndex(of: ":") { name = String(name[..<colon]) }
        return name + image[at...]
    }

    static func layoutName(_ image: String) -> String {
        let digest = SHA256.hash(data: Data(image.utf8)).map { String(byte: $0) }.joined()
        return "i-" + digest.prefix(32)
    }

    // MARK: Instances

    /// Pulls, unpacks, configures and starts one instance; returns once runc has started it.
    /// `pulled`: the image's name in the layout when the caller has just pulled it (instances of
    /// one deploy share one pull).
    public func start(_ spec: InstanceSpec, pulled: String? = nil) async throws -> InstanceState {
        try Self.check(id: spec.id)
        guard (1...65535).contains(spec.port) else { throw Failure("port \(spec.port) is not 1 to 65535") }
        let name: String
        if let pulled { name = pulled } else { name = try await pull(spec.image, insecure: spec.insecureRegistry) }
        let instance = instanceDirectory(spec.id)
        if FileManager.default.fileExists(atPath: instance) {
            throw Failure("instance \(spec.id) exists already; remove it first")
        }
        try FileManager.default.createDirectory(atPath: instance, withIntermediateDirectories: true)
        let bundle = instance + "/bundle"
        try await tool("/usr/bin/umoci", ["unpack", "--image", "\(layout):\(name)", bundle], "unpacking \(spec.image)")
        try configure(bundle: bundle, spec)
        return try await run(spec.id)
    }

    /// Runs an instance that has exited again, from its bundle as it is (same files, same port);
    /// its output is appended to the same log files.
    public func restart(_ id: String) async throws -> InstanceState {
        try Self.check(id: id)
        guard FileManager.default.fileExists(atPath: instanceDirectory(id) + "/bundle/config.json") else {
            throw Failure("instance \(id) has no bundle to restart")
        }
        _ = try await ChildProcess("/usr/sbin/runc", ["--root", runcRoot, "delete", "--force", id]).output()
        return try await run(id)
    }

    private func run(_ id: String) async throws -> InstanceState {
        let instance = instanceDirectory(id)
        // runc's own stdio become the container's: files, so they outlive runc and this process.
        try await tool("/bin/sh", [
            "-c", "exec /usr/sbin/runc --root \"$1\" run --detach --pid-file \"$2\" --bundle \"$3\" \"$4\" >>\"$5\" 2>>\"$6\" </dev/null",
            "sh", runcRoot, instance + "/pid", instance + "/bundle", id, stdoutPath(id), stderrPath(id),
        ], "starting \(id)")
        guard let state = try await state(id) else { throw Failure("instance \(id) did not start (see \(stderrPath(id)))") }
        return state
    }

    /// The OCI runtime config: the image's own (command, environment, working directory, user)
    /// with this instance's environment, PORT, limits and the host network.
    func configure(bundle: String, _ spec: InstanceSpec) throws {
        let path = bundle + "/config.json"
        guard var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any],
              var process = config["process"] as? [String: Any], var linux = config["linux"] as? [String: Any]
        else { throw Failure("\(path) is not an OCI runtime config") }
        process["terminal"] = false
        var environment = (process["env"] as? [String] ?? []).filter { entry in
            let name = entry.split(separator: "=", maxSplits: 1).first.map(String.init) ?? entry
            return name != "PORT" && spec.environment[name] == nil
        }
        for (name, value) in spec.environment.sorted(by: { $0.key < $1.key }) { environment.append("\(name)=\(value)") }
        environment.append("PORT=\(spec.port)")
        process["env"] = environment
        if let command = spec.command, !command.isEmpty { process["args"] = command }
        config["process"] = process
        config["hostname"] = String(spec.id.prefix(63))
        var root = config["root"] as? [String: Any] ?? ["path": "rootfs"]
        root["readonly"] = spec.readOnlyRootfs
        config["root"] = root
        // The host's network: instances listen on their own loopback port.
        linux["namespaces"] = (linux["namespaces"] as? [[String: Any]] ?? []).filter { $0["type"] as? String != "network" }
        var resources = linux["resources"] as? [String: Any] ?? [:]
        if let memory = spec.memoryMiB { resources["memory"] = ["limit": memory * 1024 * 1024] }
        if let cpu = spec.cpuMillicores { resources["cpu"] = ["quota": cpu * 100, "period": 100_000] }
        linux["resources"] = resources
        // A cgroup of its own at a known place: its OOM kill count is read when it exits.
        linux["cgroupsPath"] = "/slipway/\(spec.id)"
        config["linux"] = linux
        try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys]).write(to: URL(fileURLWithPath: path))
    }

    /// The instance as runc sees it, nil when runc does not know it.
    public func state(_ id: String) async throws -> InstanceState? {
        try Self.check(id: id)
        let (termination, lines) = try await ChildProcess("/usr/sbin/runc", ["--root", runcRoot, "state", id]).output()
        guard termination.succeeded else { return nil }
        return try Self.parseState(Data(lines.joined(separator: "\n").utf8))
    }

    /// Every instance runc knows under this runtime's root.
    public func list() async throws -> [InstanceState] {
        let (termination, lines) = try await ChildProcess("/usr/sbin/runc", ["--root", runcRoot, "list", "--format", "json"]).output()
        guard termination.succeeded else { throw Failure("runc list failed: \(lines.suffix(3).joined(separator: " / "))") }
        let text = lines.joined(separator: "\n")
        // "null" when there are none.
        guard let array = try JSONSerialization.jsonObject(with: Data(text.utf8), options: .fragmentsAllowed) as? [[String: Any]] else { return [] }
        return array.compactMap(Self.state(from:))
    }

    static func parseState(_ data: Data) throws -> InstanceState? {
        (try JSONSerialization.jsonObject(with: data) as? [String: Any]).flatMap(state(from:))
    }

    static func state(from object: [String: Any]) -> InstanceState? {
        guard let id = object["id"] as? String, let raw = object["status"] as? String, let status = Status(rawValue: raw) else { return nil }
        return InstanceState(id: id, status: status, pid: Int32(object["pid"] as? Int ?? 0))
    }

    /// SIGTERM, then SIGKILL once `grace` has passed; returns when the instance has stopped and runc
    /// has forgotten it. Its directory (bundle and logs) stays until ``remove(_:)``.
    public func stop(_ id: String, grace: Duration) async throws {
        guard let current = try await state(id) else { return }
        if current.status == .running || current.status == .paused {
            _ = try await ChildProcess("/usr/sbin/runc", ["--root", runcRoot, "kill", id, "TERM"]).output()
            if !(try await waitStopped(id, within: grace)) {
                _ = try await ChildProcess("/usr/sbin/runc", ["--root", runcRoot, "kill", id, "KILL"]).output()
                guard try await waitStopped(id, within: .seconds(10)) else { throw Failure("instance \(id) did not stop after SIGKILL") }
            }
        }
        try await tool("/usr/sbin/runc", ["--root", runcRoot, "delete", "--force", id], "deleting \(id)")
        _ = reap(id)  // no zombie left behind
    }

    /// Runs `command` inside the running instance (`runc exec`); success when it exits 0 within
    /// `timeout` (then it is killed).
    func exec(_ id: String, _ command: [String], timeout: Duration) async -> Probe.Result {
        guard !command.isEmpty else { return .failure("exec check without a command") }
        let shown = command.joined(separator: " ")
        let runcRoot = self.runcRoot
        do {
            let (termination, lines) = try await withTimeout(timeout) {
                try await ChildProcess("/usr/sbin/runc", ["--root", runcRoot, "exec", id] + command).output()
            }
            if termination.succeeded { return .success }
            let last = lines.last(where: { !$0.isEmpty }).map { ": \($0.prefix(200))" } ?? ""
            return .failure("exec `\(shown)` exited with status \(termination.exitCode ?? -1)\(last)")
        } catch is TimeoutError {
            return .failure("exec `\(shown)` did not finish within \(timeout)")
        } catch {
            return .failure("exec `\(shown)`: \(error)")
        }
    }

    /// How an instance's process ended.
    public enum Exit: Sendable, Equatable {
        case exited(code: Int32)
        case signaled(Int32)
    }

    /// How the instance's last run ended, if this process is its parent: the cluster service is the
    /// child subreaper of the containers it starts (runc exits once it has started one), so it reaps
    /// them and reads their status. Nil when the status is not ours to read (it ended while another
    /// cluster-service process ran) or it has not ended.
    public func reap(_ id: String) -> Exit? {
        guard let text = try? String(contentsOfFile: instanceDirectory(id) + "/pid", encoding: .utf8),
              let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0 else { return nil }
        var status: Int32 = 0
        guard waitpid(pid, &status, WNOHANG) == pid else { return nil }
        // Reaped: the pid may be reused by anything now, so it is never waited for again.
        unlink(instanceDirectory(id) + "/pid")
        return status & 0x7f == 0 ? .exited(code: (status >> 8) & 0xff) : .signaled(status & 0x7f)
    }

    /// Times the kernel's OOM killer killed a process of the instance's current run (cgroup v1
    /// `memory.oom_control`, v2 `memory.events`); nil when its cgroup is not there.
    public func oomKills(_ id: String) -> Int? {
        for (path, key) in [("/sys/fs/cgroup/memory/slipway/\(id)/memory.oom_control", "oom_kill"), ("/sys/fs/cgroup/slipway/\(id)/memory.events", "oom_kill")] {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n") {
                let fields = line.split(separator: " ")
                if fields.count == 2, fields[0] == key, let count = Int(fields[1]) { return count }
            }
            return 0
        }
        return nil
    }

    /// Stops it if needed and removes its directory.
    public func remove(_ id: String) async throws {
        try await stop(id, grace: .zero)
        try? FileManager.default.removeItem(atPath: instanceDirectory(id))
    }

    /// How often a stopping instance is looked at.
    static let stopPoll: Duration = .milliseconds(20)

    private func waitStopped(_ id: String, within limit: Duration) async throws -> Bool {
        let deadline = ContinuousClock.now + limit
        while true {
            guard let state = try await state(id), state.status != .stopped else { return true }
            if ContinuousClock.now >= deadline { return false }
            try await Task.sleep(for: Self.stopPoll)
        }
    }

    // MARK: Helpers

    static func check(id: String) throws {
        let bytes = Array(id.utf8)
        let valid = !bytes.isEmpty && bytes.count <= 64 && bytes.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 || $0 == 46 || $0 == 95 }
            && bytes[0] != 45 && bytes[0] != 46 && bytes[0] != 95
        guard valid else { throw Failure("instance id \"\(id.prefix(80))\" must be 1 to 64 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit") }
    }

    private func tool(_ executable: String, _ arguments: [String], _ what: String) async throws {
        let (termination, lines) = try await ChildProcess(executable, arguments).output()
        guard termination.succeeded else {
            throw Failure("\(what) failed: \(lines.suffix(5).joined(separator: " / "))")
        }
    }
}

extension String {
    init(byte: UInt8) {
        let digits = Array("0123456789abcdef".utf8)
        self = String(decoding: [digits[Int(byte >> 4)], digits[Int(byte & 15)]], as: UTF8.self)
    }
}
