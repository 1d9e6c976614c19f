import Foundation
import SlipwayProcess
import SlipwayRegistry
import SlipwayTestSupport
import Testing

@testable import SlipwayCluster

/// The local runtime against a real docker-registry, real buildah (to make the image), umoci and runc.
@Suite(.serialized) struct LocalRuntimeTests {
    /// examples/hello built by buildah and pushed to `registry`; returns its reference by digest.
    static func pushHello(_ registry: TestRegistry, scratch: String) async throws -> String {
        let storage = ["--storage-driver", "vfs", "--root", scratch + "/containers", "--runroot", scratch + "/run"]
        let image = "\(registry.host)/tests/hello:1"
        let built = try await ChildProcess("/usr/bin/buildah", storage + [
            "bud", "--isolation", "chroot", "--tls-verify=false", "--build-arg", "BASE=\(registry.host)/slipway/busybox:latest",
            "-t", image, repositoryRoot + "/examples/hello",
        ]).output()
        guard built.0.succeeded else { throw TestFailure("buildah bud failed: \(built.1.suffix(5))") }
        let pushed = try await ChildProcess("/usr/bin/buildah", storage + ["push", "--tls-verify=false", image]).output()
        guard pushed.0.succeeded else { throw TestFailure("buildah push failed: \(pushed.1.suffix(5))") }
        let digest = try #require(try await registry.client.manifestDigest(repository: "tests/hello", reference: "1"))
        return "\(registry.host)/tests/hello@\(digest)"
    }

    static func get(_ port: Int, _ path: String) async throws -> String? {
        let (termination, lines) = try await ChildProcess("/usr/bin/curl", ["-sf", "-m", "2", "http://127.0.0.1:\(port)\(path)"]).output()
        return termination.succeeded ? lines.joined(separator: "\n") : nil
    }

    /// Waits until the instance answers on its port (a stopped instance fails at once).
    static func waitServing(_ runtime: LocalRuntime, _ id: String, port: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            if try await get(port, "/health") != nil { return }
            guard try await runtime.state(id)?.status == .running else { throw TestFailure("instance \(id) is not running") }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw TestFailure("instance \(id) did not answer on \(port) within 20 s")
    }

    @Test func anImageFromTheRegistryRunsUnderRuncOnItsPortAndStops() async throws {
        try await TestRegistry.withSeeded("slipway-runtime") { scratch, registry in try await runsAndStops(scratch, registry) }
    }

    func runsAndStops(_ scratch: String, _ registry: TestRegistry) async throws {
        let image = try await Self.pushHello(registry, scratch: scratch)

        let runtime = try LocalRuntime(directory: scratch + "/cluster")
        let port = try TestRegistry.freePort()
        var spec = LocalRuntime.InstanceSpec(id: "hello-1", image: image, port: port)
        spec.insecureRegistry = true
        spec.environment = ["GREETING": "hi", "API_TOKEN": "secret-value"]
        spec.memoryMiB = 64
        spec.cpuMillicores = 250
        let started = try await runtime.start(spec)
        #expect(started.status == .running && started.pid > 0)
        try await Self.waitServing(runtime, "hello-1", port: port)
        #expect(try await Self.get(port, "/") != nil)

        // Its environment: the image's own, ours, and PORT; nothing of ours blocked in its signal mask.
        let environ = try String(decoding: Data(contentsOf: URL(fileURLWithPath: "/proc/\(started.pid)/environ")), as: UTF8.self).split(separator: "\0")
        #expect(environ.contains("PORT=\(port)") && environ.contains("GREETING=hi") && environ.contains("API_TOKEN=secret-value"))
        #expect(environ.contains { $0.hasPrefix("PATH=") })
        let status = try String(contentsOfFile: "/proc/\(started.pid)/status", encoding: .utf8)
        #expect(status.contains("SigBlk:\t0000000000000000"))
        // Its limits are the kernel's (cgroup v1 here): 64 MiB of memory, a quarter of a CPU.
        let cgroups = try String(contentsOfFile: "/proc/\(started.pid)/cgroup", encoding: .utf8).split(separator: "\n")
        func controller(_ name: String) throws -> String {
            let line = try #require(cgroups.first { $0.split(separator: ":").dropFirst().first?.split(separator: ",").contains(Substring(name)) == true })
            return "/sys/fs/cgroup/\(name)" + line.split(separator: ":", maxSplits: 2)[2]
        }
        let memoryLimit = try String(contentsOfFile: try controller("memory") + "/memory.limit_in_bytes", encoding: .utf8)
        #expect(memoryLimit.trimmingCharacters(in: .whitespacesAndNewlines) == "\(64 * 1024 * 1024)")
        let cpuQuota = try String(contentsOfFile: try controller("cpu") + "/cpu.cfs_quota_us", encoding: .utf8)
        #expect(cpuQuota.trimmingCharacters(in: .whitespacesAndNewlines) == "25000")
        // Its runtime config holds its secrets: the owner's alone.
        let config = try FileManager.default.attributesOfItem(atPath: runtime.instanceDirectory("hello-1") + "/bundle/config.json")
        #expect((config[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        // Its output goes to the instance's files.
        #expect(try String(contentsOfFile: runtime.stdoutPath("hello-1"), encoding: .utf8).contains("listening on port \(port)"))

        // A runtime opened later on the same directory finds it (what a restarted cluster service does).
        let reopened = try LocalRuntime(directory: scratch + "/cluster")
        #expect(try await reopened.list().map(\.id) == ["hello-1"])

        // examples/hello stops on SIGTERM: well within the grace period.
        let stopping = ContinuousClock.now
        try await runtime.stop("hello-1", grace: .seconds(10))
        #expect(ContinuousClock.now - stopping < .seconds(5))
        let output = try String(contentsOfFile: runtime.stdoutPath("hello-1"), encoding: .utf8)
        #expect(output.contains("hello: stopped"), "\(output) / \((try? String(contentsOfFile: runtime.stderrPath("hello-1"), encoding: .utf8)) ?? "")")
        #expect(try await runtime.state("hello-1") == nil)
        #expect(try await Self.get(port, "/health") == nil)
        // Gone, or a zombie waiting for whoever it was reparented to (not this process) to reap it.
        let processState = (try? String(contentsOfFile: "/proc/\(started.pid)/status", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("State:") }
        #expect(processState == nil || processState!.contains("Z (zombie)"))
        try await runtime.remove("hello-1")
        #expect(!FileManager.default.fileExists(atPath: runtime.instanceDirectory("hello-1")))
    }

    @Test func aProcessThatIgnoresSigtermIsKilledAfterTheGracePeriod() async throws {
        try await TestRegistry.withSeeded("slipway-runtime") { scratch, registry in try await killedAfterGrace(scratch, registry) }
    }

    func killedAfterGrace(_ scratch: String, _ registry: TestRegistry) async throws {
        let runtime = try LocalRuntime(directory: scratch + "/cluster")
        var spec = LocalRuntime.InstanceSpec(id: "stubborn", image: "\(registry.host)/slipway/busybox:latest", port: try TestRegistry.freePort())
        spec.insecureRegistry = true
        spec.command = ["/bin/sh", "-c", "trap '' TERM; echo started; while true; do sleep 1; done"]
        let started = try await runtime.start(spec)
        #expect(started.status == .running)
        let stopping = ContinuousClock.now
        try await runtime.stop("stubborn", grace: .milliseconds(500))
        #expect(ContinuousClock.now - stopping >= .milliseconds(500))
        #expect(try await runtime.state("stubborn") == nil)
        try await runtime.remove("stubborn")
    }

    @Test func badSpecsAreRefusedBeforeAnythingRuns() async throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-runtime-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let runtime = try LocalRuntime(directory: scratch)
        await #expect(throws: LocalRuntime.Failure.self) { try await runtime.start(.init(id: "Bad/ID", image: "x", port: 8080)) }
        await #expect(throws: LocalRuntime.Failure.self) { try await runtime.start(.init(id: "ok", image: "x", port: 0)) }
        // An image that is not there: the pull fails with skopeo's reason, nothing is left behind.
        var missing = LocalRuntime.InstanceSpec(id: "missing", image: "127.0.0.1:1/nothing:here", port: 8080)
        missing.insecureRegistry = true
        let error = await #expect(throws: LocalRuntime.Failure.self) { try await runtime.start(missing) }
        #expect(error?.description.hasPrefix("pulling 127.0.0.1:1/nothing:here failed") == true)
        #expect(!FileManager.default.fileExists(atPath: runtime.instanceDirectory("missing")))
        #expect(try await runtime.list().isEmpty)
    }
}
