import Foundation
import SlipwayRegistry

#if canImport(Glibc)
import Glibc
#endif

/// The repository's root directory (scripts, examples).
public let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A real `docker-registry` (the distribution registry) on a free loopback port.
public final class TestRegistry: Sendable {
    public let host: String
    private let pid: pid_t

    private init(host: String, pid: pid_t) {
        self.host = host
        self.pid = pid
    }

    /// `login`: the registry asks for HTTP basic authentication with this user and password.
    public static func start(storage: String, login: (user: String, password: String)? = nil) async throws -> TestRegistry {
        let port = try freePort()
        let config = storage + "/config-\(port).yml"
        var yaml = """
        version: 0.1
        log: { level: error }
        storage: { filesystem: { rootdirectory: \(storage)/data }, delete: { enabled: true } }
        http: { addr: 127.0.0.1:\(port) }
        """
        if let login {
            // docker-registry wants bcrypt: htpasswd (apache2-utils) makes the file.
            let htpasswd = storage + "/htpasswd-\(port)"
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/htpasswd")
            process.arguments = ["-Bbc", htpasswd, login.user, login.password]
            process.standardError = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { throw TestFailure("htpasswd failed") }
            yaml += "\nauth: { htpasswd: { realm: slipway-test, path: \(htpasswd) } }"
        }
        try Data(yaml.utf8).write(to: URL(fileURLWithPath: config))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/docker-registry")
        process.arguments = ["serve", config]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let registry = TestRegistry(host: "127.0.0.1:\(port)", pid: process.processIdentifier)
        // Up when /v2/ answers; a registry that never comes up fails the test after 20 s.
        let client = RegistryClient(host: registry.host, insecure: true, credentials: login.map { .init(username: $0.user, password: $0.password) }, timeout: .seconds(2))
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            do {
                try await client.ping()
                return registry
            } catch {
                guard ContinuousClock.now < deadline, process.isRunning else {
                    registry.stop()
                    throw TestFailure("docker-registry did not start on \(registry.host): \(error)")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    /// A scratch directory with a seeded registry in it, both gone when `body` returns.
    public static func withSeeded(_ prefix: String, _ body: (_ scratch: String, _ registry: TestRegistry) async throws -> Void) async throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: scratch + "/registry", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let registry = try await start(storage: scratch + "/registry")
        defer { registry.stop() }
        try await registry.seed()
        try await body(scratch, registry)
    }

    /// Pushes the busybox base image (skipped when the storage already has it).
    public func seed() async throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [repositoryRoot + "/scripts/seed-base-images.sh", host]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestFailure("seed-base-images.sh failed for \(host)") }
    }

    public var client: RegistryClient { RegistryClient(host: host, insecure: true) }

    public func stop() {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
    }

    public static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw TestFailure("no free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
