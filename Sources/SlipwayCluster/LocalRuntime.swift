import Crypto
import Foundation
import SlipwayIsolation
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
/// Isolated instances (``InstanceSpec/isolation``, the default of the cluster service) run in a
/// network namespace and a user namespace of their own, hardened by ``InstanceHardening``; without
/// isolation they share the host's network namespace and listen on the loopback port they get in
/// `PORT`. Their stdout and stderr go to files in the instance directory, which outlive this
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
        /// Its own network and user namespaces (nil: the host's network, root is the host's root).
        public var isolation: Isolation?

        public init(id: String, image: String, port: Int) {
            self.id = id
            self.image = image
            self.port = port
        }
    }

    /// Where an isolated instance is attached and what it is told about its neighbours.
    public struct Isolation: Sendable, Equatable {
        public var attachment: EnvironmentNetworks.Attachment
        /// Its `/etc/hosts` (rewritten in place as its environment changes: ``writeHosts(_:_:)``).
        public var hosts: String
        public var resolvConf: String

        public init(attachment: EnvironmentNetworks.Attachment, hosts: String, resolvConf: String) {
            self.attachment = attachment
            self.hosts = hosts
            self.resolvConf = resolvConf
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
    /// skopeo rewrites the layout's index.json in place: two pulls at once lose each other's tag,
    /// and an unpack reading it meanwhile can miss its own. They take turns.
    private let layoutTurns = Turns()
    var runcRoot: String { directory + "/runc" }
    /// Credentials for pulls (containers-auth.json: each registry's own, sent to it alone); nil: anonymous.
    public let registryAuthFile: String?
    /// Isolated instances' networks: their namespaces go when they are removed.
    public let network: EnvironmentNetworks?

    public init(directory: String, registryAuthFile: String? = nil, network: EnvironmentNetworks? = nil) throws {
        self.directory = directory
        self.registryAuthFile = registryAuthFile
        self.network = network
        for path in [directory + "/images", directory + "/instances", directory + "/runc"] {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        // The cluster's directory and the data directory above it.
        if network != nil { try LocalDirectories.searchable(directory + "/instances", owned: 3) }
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
        await layoutTurns.acquire()
        defer { layoutTurns.release() }
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
        var unpack = ["unpack", "--image", "\(layout):\(name)"]
        if let isolation = spec.isolation {
            // Owned by the environment's unprivileged range: root inside owns its files.
            let map = "0:\(isolation.attachment.hostID):\(EnvironmentNetworks.idRange)"
            unpack += ["--uid-map", map, "--gid-map", map]
            try FileManager.default.createDirectory(atPath: instance + "/etc", withIntermediateDirectories: true)
            try writeHosts(spec.id, isolation.hosts)
            try Data(isolation.resolvConf.utf8).write(to: URL(fileURLWithPath: instance + "/etc/resolv.conf"))
        }
        await layoutTurns.acquire()
        do {
            try await tool("/usr/bin/umoci", unpack + [bundle], "unpacking \(spec.image)")
            layoutTurns.release()
        } catch {
            layoutTurns.release()
            throw error
        }
        // umoci makes the bundle 0700; the instance's root (another uid) must pass through it.
        if spec.isolation != nil { chmod(bundle, 0o711) }
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
        // An isolated instance is created, its network namespace (runc's, owned by its user
        // namespace) connected, and only then started: the app never runs without its network.
        let isolated = await network?.attachment(id) != nil
        let command = isolated ? "create" : "run --detach"
        // runc's own stdio become the container's: files, so they outlive runc and this process.
        let (termination, _) = try await ChildProcess("/bin/sh", [
            "-c", "exec /usr/sbin/runc --root \"$1\" \(command) --pid-file \"$2\" --bundle \"$3\" \"$4\" >>\"$5\" 2>>\"$6\" </dev/null",
            "sh", runcRoot, instance + "/pid", instance + "/bundle", id, stdoutPath(id), stderrPath(id),
        ]).output()
        guard termination.succeeded else {
            // runc's complaint went to the instance's stderr.
            let said = (try? String(contentsOfFile: stderrPath(id), encoding: .utf8)).map { String($0.suffix(400)) } ?? ""
            throw Failure("starting \(id) failed: \(said.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
        if isolated, let network {
            do {
                let text = (try? String(contentsOfFile: instance + "/pid", encoding: .utf8)) ?? ""
                guard let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw Failure("runc created \(id) without a pid file") }
                try await network.wire(id, pid: pid)
                try await tool("/usr/sbin/runc", ["--root", runcRoot, "start", id], "starting \(id)")
            } catch {
                _ = try? await ChildProcess("/usr/sbin/runc", ["--root", runcRoot, "delete", "--force", id]).output()
                _ = reap(id)
                throw error
            }
        }
        guard let state = try await state(id) else { throw Failure("instance \(id) did not start (see \(stderrPath(id)))") }
        return state
    }

    /// Replaces an isolated instance's `/etc/hosts` in place (its bind mount keeps the inode).
    public func writeHosts(_ id: String, _ content: String) throws {
        let path = instanceDirectory(id) + "/etc/hosts"
        let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard fd >= 0 else { throw Failure("cannot write \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let bytes = Array(content.utf8)
        let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        guard written == bytes.count, ftruncate(fd, off_t(bytes.count)) == 0 else {
            throw Failure("cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// The OCI runtime config: the image's own (command, environment, working directory, user)
    /// with this instance's environment, PORT, limits, and the host network or its isolation.
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
        // Unisolated, the host's network: instances listen on their own loopback port.
        linux["namespaces"] = (linux["namespaces"] as? [[String: Any]] ?? []).filter { $0["type"] as? String != "network" }
        var resources = linux["resources"] as? [String: Any] ?? [:]
        if let memory = spec.memoryMiB { resources["memory"] = ["limit": memory * 1024 * 1024] }
        if let cpu = spec.cpuMillicores { resources["cpu"] = ["quota": cpu * 100, "period": 100_000] }
        linux["resources"] = resources
        // A cgroup of its own at a known place: its OOM kill count is read when it exits.
        linux["cgroupsPath"] = "/slipway/\(spec.id)"
        config["linux"] = linux
        if let isolation = spec.isolation {
            let etc = instanceDirectory(spec.id) + "/etc"
            InstanceHardening.apply(
                to: &config, namespacePath: nil, hostID: isolation.attachment.hostID,
                files: [(etc + "/hosts", "/etc/hosts"), (etc + "/resolv.conf", "/etc/resolv.conf")])
        }
        // It holds the instance's secrets (its environment): runc reads it as root, nobody else may.
        try AtomicFile.write(try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys]), to: path, mode: 0o600)
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
            // Its init, as the kernel knows it now: gone once its /proc entry is (or is a zombie, or
            // another process with its pid), which is what runc calls stopped, read without a runc per look.
            let initProcess = Self.processStart(current.pid).map { (current.pid, $0) }
            _ = try await ChildProcess("/usr/sbin/runc", ["--root", runcRoot, "kill", id, "TERM"]).output()
            if !(try await waitStopped(id, initProcess, within: grace)) {
                _ = try await ChildProcess("/usr/sbin/runc", ["--root", runcRoot, "kill", id, "KILL"]).output()
                guard try await waitStopped(id, initProcess, within: .seconds(10)) else { throw Failure("instance \(id) did not stop after SIGKILL") }
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
        await network?.detach(id)
        try? FileManager.default.removeItem(atPath: instanceDirectory(id))
    }

    /// How often a stopping instance is looked at.
    static let stopPoll: Duration = .milliseconds(20)

    private func waitStopped(_ id: String, _ initProcess: (pid: Int32, start: UInt64)?, within limit: Duration) async throws -> Bool {
        let deadline = ContinuousClock.now + limit
        while true {
            if let initProcess {
                if Self.processStart(initProcess.pid) != initProcess.start { return true }
            } else {
                guard let state = try await state(id), state.status != .stopped else { return true }
            }
            if ContinuousClock.now >= deadline { return false }
            try await Task.sleep(for: Self.stopPoll)
        }
    }

    /// When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22); nil when
    /// there is no such process or it has ended (a zombie).
    static func processStart(_ pid: Int32) -> UInt64? {
        guard pid > 0, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return nil }
        // After the command (in parentheses, which may hold spaces): state is field 3, start time field 22.
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19, fields[0] != "Z", fields[0] != "X" else { return nil }
        return UInt64(fields[19])
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
