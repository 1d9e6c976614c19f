import ArgumentParser
import CSlipwaySpawn
import Foundation
import Logging
import SlipwayIsolation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import SlipwayProtos
import NIOHTTP1
import SlipwayHTTP
import SlipwayRPC
import SlipwayServiceKit

/// The local platform's processes: the registry and the seven services, started by the supervisor
/// (`slipway supervise`), each with its pid in `<data>/run/<name>.pid` and its output in
/// `<data>/logs/<name>.log`.
struct Platform {
    static let services = ["gateway", "pipeline", "builder", "network", "cluster", "certs", "logs"]
    let dataDir: String

    var runDir: String { dataDir + "/run" }
    var logDir: String { dataDir + "/logs" }

    func pid(_ name: String) -> pid_t? {
        guard let text = try? String(contentsOfFile: "\(runDir)/\(name).pid", encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)),
            Self.alive(pid)
        else { return nil }
        // A pid file older than a reboot may name another program now.
        let command = (try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8)) ?? ""
        let expected = switch name {
        case "registry": "docker-registry"
        case "supervisor": "supervise"
        default: "slipway-\(name)"
        }
        guard command.contains(expected) else { return nil }
        return pid
    }

    /// Whether the process exists and is not a zombie (a killed service whose parent has exited
    /// may wait unreaped when nothing reaps orphans, as in containers without an init).
    static func alive(_ pid: pid_t) -> Bool {
        guard kill(pid, 0) == 0 else { return false }
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return true }
        let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
        return state != "Z" && state != "X"
    }

    /// Starts `executable` detached (a new session, output appended to its log) and writes its pid file.
    func spawn(_ name: String, _ executable: String, _ arguments: [String]) throws -> pid_t {
        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = ProcessInfo.processInfo.environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = slipway_spawn_daemon(executable, argv, envp, "\(logDir)/\(name).log", &pid)
        guard result == 0 else { throw CLIError.failed("cannot start \(executable): \(String(cString: strerror(result)))") }
        try "\(pid)\n".write(toFile: "\(runDir)/\(name).pid", atomically: true, encoding: .utf8)
        return pid
    }

    /// SIGTERM (SIGQUIT for nginx), then waits up to `seconds` before SIGKILL. True if it was running.
    @discardableResult
    static func stop(pid: pid_t, signal: Int32 = SIGTERM, seconds: Double = 10) -> Bool {
        guard alive(pid) else { return false }
        kill(pid, signal)
        let deadline = Date().addingTimeInterval(seconds)
        while alive(pid), Date() < deadline {
            var status: Int32 = 0
            _ = waitpid(pid, &status, WNOHANG)
            usleep(50_000)
        }
        if alive(pid) { kill(pid, SIGKILL) }
        return true
    }
}

struct UpCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "up", abstract: "Start the local platform: the registry, the seven services, nginx and the local CA.")
    @Option(help: "Data directory (env SLIPWAY_DATA_DIR, default ./.slipway).") var dataDir: String?
    @Option(help: "Directory of the slipway-* executables (default: next to this one).") var binDir: String?
    @Option(help: "The OCI registry's address (env SLIPWAY_REGISTRY, default 127.0.0.1:5000).") var registry: String?
    @Option(help: "The load balancer's HTTP address.") var httpListen = "127.0.0.1:80"
    @Option(help: "The load balancer's HTTPS address.") var httpsListen = "127.0.0.1:443"
    @Option(help: "A directory whose git repositories services may name by path (repeatable; the builder's --builder-local-sources).")
    var localSources: [String] = []
    @Option(name: [.customShort("o"), .long], help: "Output: text or json.") var output: OutputFormat = .text

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        var data = dataDir ?? environment["SLIPWAY_DATA_DIR"] ?? "./.slipway"
        if !data.hasPrefix("/") { data = URL(fileURLWithPath: data).standardizedFileURL.path }
        let platform = Platform(dataDir: data)
        let out = Output(output)
        for directory in [platform.runDir, platform.logDir, data + "/registry"] {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        let bin = binDir ?? URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
        for name in Platform.services where !FileManager.default.isExecutableFile(atPath: "\(bin)/slipway-\(name)") {
            throw CLIError.failed("\(bin)/slipway-\(name) is missing: build the platform (swift build) or pass --bin-dir")
        }
        let registryAddress = registry ?? environment["SLIPWAY_REGISTRY"] ?? "127.0.0.1:5000"

        // The registry images are built into and run from. Only the builder (push, base images)
        // and the cluster (pull) hold its credentials; anonymous pull, push and delete are refused.
        let registryLogin = try RegistryLogin.loadOrCreate(directory: data + "/registry", registry: registryAddress)
        let config = """
            version: 0.1
            log: { level: warn }
            storage: { filesystem: { rootdirectory: \(data)/registry/data }, delete: { enabled: true } }
            http: { addr: \(registryAddress) }
            auth: { htpasswd: { realm: slipway, path: \(registryLogin.htpasswdPath) } }

            """
        try config.write(toFile: data + "/registry/config.yml", atomically: true, encoding: .utf8)
        guard let registryBinary = Self.which("docker-registry") else {
            throw CLIError.failed("docker-registry is not installed (apt-get install docker-registry; make demo installs it)")
        }
        // The platform CA and every service's identity, before any service starts (they refuse to
        // start without one): internal calls are mutual TLS.
        let pki = PlatformPKI(dataDirectory: data)
        try pki.prepare()
        let operatorIdentity = try pki.operatorIdentity()
        // What the supervisor runs: the registry, then the seven services.
        var programs = [SupervisorPlan.Program(name: "registry", executable: registryBinary, arguments: ["serve", data + "/registry/config.yml"])]
        for (index, name) in Platform.services.enumerated() {
            var arguments = ["--data-dir", data]
            if environment["SLIPWAY_\(name.uppercased())_LISTEN"] == nil { arguments += ["--listen", "127.0.0.1:\(7000 + index)"] }
            if name == "builder" {
                arguments += ["--builder-registry", registryAddress, "--builder-registry-auth-file", registryLogin.authFilePath]
                for root in localSources { arguments += ["--builder-local-sources", URL(fileURLWithPath: root).standardizedFileURL.path] }
            }
            if name == "cluster" { arguments += ["--cluster-registry-auth-file", registryLogin.authFilePath] }
            if name == "network" { arguments += ["--network-http-listen", httpListen, "--network-https-listen", httpsListen] }
            programs.append(.init(name: name, executable: "\(bin)/slipway-\(name)", arguments: arguments))
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        try AtomicFile.write(try encoder.encode(SupervisorPlan(programs: programs)), to: platform.runDir + "/supervisor-plan.json", mode: 0o600)
        if let supervisor = platform.pid("supervisor") {
            // Running: it reads the plan again and starts what does not run.
            kill(supervisor, SIGHUP)
        } else {
            let slipway = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
            _ = try platform.spawn("supervisor", slipway, ["supervise", "--data-dir", data])
        }
        try await Self.waitForRegistry(registryAddress, log: "\(platform.logDir)/registry.log")

        let (rows, report, healthy) = await Self.statusRows(platform, registryAddress: registryAddress, identity: operatorIdentity, out: out, wait: .seconds(30))
        let caFile = data + "/certs/local-ca.crt"
        let tokenFile = data + "/gateway/admin-token"
        if out.json {
            out.emit([
                "data_dir": data, "services": report, "registry": registryAddress, "load_balancer": ["http": httpListen, "https": httpsListen],
                "local_ca": caFile, "admin_token_file": tokenFile, "gateway": "127.0.0.1:7000", "healthy": healthy,
                "platform_ca": pki.caCertificatePath, "operator_identity": pki.identityDirectory(.operator),
                "registry_auth_file": registryLogin.authFilePath, "supervisor_pid": Int(platform.pid("supervisor") ?? 0),
            ] as [String: Any])
        } else {
            out.table(Self.statusColumns, rows)
            out.line()
            out.line("load balancer (nginx)  http://\(httpListen)  https://\(httpsListen)")
            out.line("gateway API            127.0.0.1:7000 (gRPC; webhooks and event streams over HTTP/1.1 on the same port)")
            out.line("admin token            \(tokenFile)")
            out.line("platform CA            \(pki.caCertificatePath) (internal calls: mutual TLS; operator identity in \(pki.identityDirectory(.operator)))")
            out.line("registry credentials   \(registryLogin.authFilePath) (builder and cluster only; REGISTRY_AUTH_FILE for buildah/skopeo)")
            out.line("local CA               \(caFile)")
            out.line("  trust it: cp \(caFile) /usr/local/share/ca-certificates/slipway-local-ca.crt && update-ca-certificates")
            out.line("data directory         \(data)")
            out.line("stop with: slipway down --data-dir \(data)")
        }
        if !healthy { throw CLIError.failed("some services did not become healthy; see their logs above") }
    }

    static let statusColumns = ["COMPONENT", "ADDRESS", "PID", "HEALTH", "RESTARTS", "LAST EXIT", "LOG"]

    /// Each component's address, pid, health (polled up to `wait` for SERVING), restarts and last
    /// exit as the supervisor recorded them.
    static func statusRows(
        _ platform: Platform, registryAddress: String, identity: ServiceIdentity, out: Output, wait: Duration
    ) async -> (rows: [[String]], report: [[String: Any]], healthy: Bool) {
        let environment = ProcessInfo.processInfo.environment
        var rows: [[String]] = []
        var report: [[String: Any]] = []
        var healthy = true
        var statuses: [String] = []
        for (index, name) in Platform.services.enumerated() {
            let address = environment["SLIPWAY_\(name.uppercased())_LISTEN"] ?? "127.0.0.1:\(7000 + index)"
            // Not waiting (slipway ps): a process that is not there is DOWN, not asked.
            let down = wait == .zero && platform.pid(name) == nil
            statuses.append(down ? "DOWN" : await health(address, service: ServiceName(rawValue: name)!, identity: identity, wait: wait))
        }
        // Read after the health checks (which may have waited): restarts meanwhile are counted.
        let supervised = SupervisorState.load(platform.runDir + "/supervisor.json")
        func exit(_ name: String) -> (restarts: Int, last: String) {
            let entry = supervised?.programs[name]
            let when = entry?.lastExitAt.map { " at \(timestamp(Int64($0 * 1000)))" } ?? ""
            return (entry?.restarts ?? 0, entry?.lastExit.map { $0 + when } ?? "-")
        }
        for (index, name) in Platform.services.enumerated() {
            let address = environment["SLIPWAY_\(name.uppercased())_LISTEN"] ?? "127.0.0.1:\(7000 + index)"
            let pid = Int(platform.pid(name) ?? 0)
            let status = statuses[index]
            healthy = healthy && status == "SERVING"
            let (restarts, last) = exit(name)
            rows.append([
                "slipway-\(name)", address, String(pid), status == "SERVING" ? out.paint(status, .green) : out.paint(status, .red), String(restarts), last,
                "\(platform.logDir)/\(name).log",
            ])
            report.append(["service": "slipway-\(name)", "address": address, "pid": pid, "health": status, "restarts": restarts, "last_exit": last])
        }
        let registryPID = Int(platform.pid("registry") ?? 0)
        let (restarts, last) = exit("registry")
        rows.append(["registry", registryAddress, String(registryPID), registryPID > 0 ? out.paint("SERVING", .green) : out.paint("DOWN", .red), String(restarts), last, "\(platform.logDir)/registry.log"])
        report.append(["service": "registry", "address": registryAddress, "pid": registryPID, "restarts": restarts, "last_exit": last])
        return (rows, report, healthy)
    }

    static func which(_ name: String) -> String? {
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") + ["/usr/bin", "/usr/sbin"] {
            let path = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    static func waitForRegistry(_ address: String, log: String) async throws {
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            // 401: up, and asking for credentials. (Not URLSession: it waits forever on a 401 challenge.)
            if let url = URL(string: "http://\(address)/v2/"),
                let response = try? await HTTPClient(timeout: .seconds(2)).send(.GET, url), [200, 401].contains(response.status)
            {
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw CLIError.failed("the registry did not answer on \(address) (see \(log))")
    }

    /// grpc.health.v1 status of a service, polled for up to 30 s; internal services are asked as
    /// the operator (mutual TLS), the gateway's public port as anyone.
    static func health(_ address: String, service: ServiceName, identity: ServiceIdentity, wait: Duration = .seconds(30)) async -> String {
        guard let parsed = ServiceAddress(parsing: address) else { return "bad address" }
        let client = service == .gateway ? RPCClient(host: parsed.host, port: parsed.port) : identity.client(for: service, at: parsed)
        defer { Task { await client.close() } }
        var status = "no answer"
        let deadline = ContinuousClock.now + wait
        repeat {
            do {
                let response = try await client.unary(Grpc_Health_V1_Health.Check.self, .init(), options: CallOptions(timeout: .seconds(1)))
                status = response.status.protoName
                if response.status == .serving { break }
            } catch let error as RPCError {
                status = "\(error.code)"
            } catch {
                status = "\(error)"
            }
            try? await Task.sleep(for: .milliseconds(200))
        } while ContinuousClock.now < deadline
        return status
    }
}

extension PlatformPKI {
    /// The `operator` identity `slipway up` issued: every internal method is open to it.
    func operatorIdentity() throws -> ServiceIdentity {
        try ServiceIdentity.load(
            .operator,
            paths: .init(
                identityDirectory: identityDirectory(.operator), caCertificate: caCertificatePath, revocationList: nil,
                renewedDirectory: identityDirectory(.operator)))
    }
}

/// `slipway ps`: the local platform's processes as the supervisor keeps them.
struct PsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ps", abstract: "The local platform's processes: pid, health, restarts after a crash and how each last ended.")
    @Option(help: "Data directory (env SLIPWAY_DATA_DIR, default ./.slipway).") var dataDir: String?
    @Option(name: [.customShort("o"), .long], help: "Output: text or json.") var output: OutputFormat = .text

    func run() async throws {
        var data = dataDir ?? ProcessInfo.processInfo.environment["SLIPWAY_DATA_DIR"] ?? "./.slipway"
        if !data.hasPrefix("/") { data = URL(fileURLWithPath: data).standardizedFileURL.path }
        let platform = Platform(dataDir: data)
        let out = Output(output)
        let pki = PlatformPKI(dataDirectory: data)
        guard FileManager.default.fileExists(atPath: pki.caCertificatePath) else {
            throw CLIError.failed("no platform in \(data): start it with slipway up --data-dir \(data)")
        }
        let identity = try pki.operatorIdentity()
        // The registry's address, as `slipway up` configured it.
        let config = (try? String(contentsOfFile: data + "/registry/config.yml", encoding: .utf8)) ?? ""
        let registry = config.split(separator: "\n").first { $0.contains("addr:") }.map {
            $0.split(separator: "addr:").last!.trimmingCharacters(in: CharacterSet(charactersIn: " }"))
        } ?? "-"
        let (rows, report, healthy) = await UpCommand.statusRows(platform, registryAddress: registry, identity: identity, out: out, wait: .zero)
        let supervisor = platform.pid("supervisor")
        if out.json {
            return out.emit(["services": report, "healthy": healthy, "supervisor_pid": Int(supervisor ?? 0)] as [String: Any])
        }
        out.table(UpCommand.statusColumns, rows)
        out.line()
        out.line(supervisor.map { "supervisor             pid \($0) (restarts what crashes; log \(platform.logDir)/supervisor.log)" }
            ?? "supervisor             not running: nothing restarts a crashed service (slipway up starts it)")
    }
}

/// `slipway registry-login`: the registry account `slipway up` makes, for set-ups that start the
/// registry another way (systemd units).
struct RegistryLoginCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "registry-login",
        abstract: "Create (or keep) the platform registry's account: <data>/registry/htpasswd for the registry, auth.json for the builder and cluster.")
    @OptionGroup var data: DataDirectoryOption
    @Option(help: "The registry's address, HOST:PORT (the key in auth.json).") var registry = "127.0.0.1:5000"

    func run() async throws {
        let directory = data.path + "/registry"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let login = try RegistryLogin.loadOrCreate(directory: directory, registry: registry)
        print("htpasswd   \(login.htpasswdPath)  (the registry's auth: htpasswd: path)")
        print("auth.json  \(login.authFilePath)  (--builder-registry-auth-file, --cluster-registry-auth-file)")
    }
}

struct DownCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "down", abstract: "Stop the local platform: services, registry, the apps it runs and nginx.")
    @Option(help: "Data directory (env SLIPWAY_DATA_DIR, default ./.slipway).") var dataDir: String?

    func run() async throws {
        var data = dataDir ?? ProcessInfo.processInfo.environment["SLIPWAY_DATA_DIR"] ?? "./.slipway"
        if !data.hasPrefix("/") { data = URL(fileURLWithPath: data).standardizedFileURL.path }
        let platform = Platform(dataDir: data)
        // The supervisor first (it stops what it runs, last started first), then whatever is left.
        if let supervisor = platform.pid("supervisor") {
            Platform.stop(pid: supervisor, seconds: 120)
            print("stopped the supervisor (pid \(supervisor)) and what it ran")
        }
        try? FileManager.default.removeItem(atPath: "\(platform.runDir)/supervisor.pid")
        for name in Platform.services + ["registry"] {
            if let pid = platform.pid(name) {
                Platform.stop(pid: pid)
                print("stopped \(name) (pid \(pid))")
            }
            try? FileManager.default.removeItem(atPath: "\(platform.runDir)/\(name).pid")
        }
        // The apps outlive the cluster service by design; down stops them too.
        let runcRoot = data + "/cluster/runc"
        if FileManager.default.fileExists(atPath: runcRoot), let runc = UpCommand.which("runc") {
            let list = Process()
            list.executableURL = URL(fileURLWithPath: runc)
            list.arguments = ["--root", runcRoot, "list", "-q"]
            let pipe = Pipe()
            list.standardOutput = pipe
            try list.run()
            let ids = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n")
            list.waitUntilExit()
            for id in ids {
                let delete = Process()
                delete.executableURL = URL(fileURLWithPath: runc)
                delete.arguments = ["--root", runcRoot, "delete", "--force", String(id)]
                try delete.run()
                delete.waitUntilExit()
            }
            if !ids.isEmpty { print("stopped \(ids.count) app instance(s)") }
        }
        // And their isolation (and the builds'): namespaces, bridges, the nftables tables.
        for (service, what) in [("cluster", "the apps' networks"), ("builder", "the builds' network")] {
            let networkDirectory = data + "/\(service)/network"
            if FileManager.default.fileExists(atPath: networkDirectory + "/network.json"),
               let networks = try? EnvironmentNetworks(directory: networkDirectory, logger: Logger(label: "slipway-down")) {
                await networks.removeAll()
                print("removed \(what) (nftables table inet \(networks.table))")
            }
        }
        // So does the load balancer.
        if let text = try? String(contentsOfFile: data + "/network/nginx/nginx.pid", encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)),
            Platform.stop(pid: pid, signal: SIGQUIT)
        {
            print("stopped nginx (pid \(pid))")
        }
        print("platform stopped")
    }
}

/// The registry's one account: generated at the first `slipway up` (a random password), kept as
/// an htpasswd file for the registry (bcrypt, by apache2-utils' htpasswd) and a containers-auth.json
/// for the tools that pull and push (0600).
struct RegistryLogin {
    let username: String
    let password: String
    let htpasswdPath: String
    let authFilePath: String

    static func loadOrCreate(directory: String, registry: String) throws -> RegistryLogin {
        let authFile = directory + "/auth.json"
        let htpasswd = directory + "/htpasswd"
        let username = "slipway"
        var password: String?
        if let data = FileManager.default.contents(atPath: authFile),
            let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let auths = json["auths"] as? [String: Any],
            let entry = auths.values.first as? [String: Any], let auth = entry["auth"] as? String,
            let decoded = Data(base64Encoded: auth).map({ String(decoding: $0, as: UTF8.self) }), decoded.hasPrefix(username + ":")
        {
            password = String(decoded.dropFirst(username.count + 1))
        }
        let secret = password ?? (0..<24).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        // Rewritten each time: the registry's address may have changed.
        let auth = Data("\(username):\(secret)".utf8).base64EncodedString()
        let json = try JSONSerialization.data(withJSONObject: ["auths": [registry: ["auth": auth]]], options: [.sortedKeys, .prettyPrinted])
        try AtomicFile.write(json, to: authFile, mode: 0o600)
        if password == nil || !FileManager.default.fileExists(atPath: htpasswd) {
            guard let tool = UpCommand.which("htpasswd") else {
                throw CLIError.failed("htpasswd is not installed (apt-get install apache2-utils; make demo installs it): the registry needs a bcrypt password file")
            }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: tool)
            // The password on standard input (-i), never on a command line another user can read.
            process.arguments = ["-iBn", username]
            let pipe = Pipe()
            let input = Pipe()
            process.standardOutput = pipe
            process.standardInput = input
            try process.run()
            input.fileHandleForWriting.write(Data((secret + "\n").utf8))
            try input.fileHandleForWriting.close()
            let line = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            guard process.terminationStatus == 0, !line.isEmpty else { throw CLIError.failed("htpasswd failed (exit \(process.terminationStatus))") }
            try AtomicFile.write(line, to: htpasswd, mode: 0o600)
        }
        return RegistryLogin(username: username, password: secret, htpasswdPath: htpasswd, authFilePath: authFile)
    }
}
