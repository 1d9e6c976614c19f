import Foundation
import Logging
import SlipwayProcess
import SlipwayRPC
import SlipwayRPCServices
import SlipwayRegistry
import SlipwayTestSupport
import Synchronization
import Testing

@testable import SlipwayCluster

/// Deploys through the local driver: real registry, buildah-built image, umoci and runc.
@Suite(.serialized) struct LocalClusterTests {
    struct Fixture {
        let scratch: String
        let registry: TestRegistry
        let image: String
        let cluster: LocalCluster
    }

    static func with(_ body: (Fixture) async throws -> Void) async throws {
        try await TestRegistry.withSeeded("slipway-cluster") { scratch, registry in try await with(scratch, registry, body) }
    }

    static func with(_ scratch: String, _ registry: TestRegistry, _ body: (Fixture) async throws -> Void) async throws {
        // As the cluster service does: the containers become our children once runc exits, so their
        // exit status can be read.
        ProcessTree.becomeSubreaper()
        let image = try await LocalRuntimeTests.pushHello(registry, scratch: scratch)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let cluster = try LocalCluster(directory: scratch + "/cluster", logger: logger)
        var failure: (any Error)?
        do {
            try await body(Fixture(scratch: scratch, registry: registry, image: image, cluster: cluster))
        } catch {
            failure = error
        }
        // Nothing is left running, whatever the test did.
        for instance in (try? await cluster.runtime.list()) ?? [] { try? await cluster.runtime.remove(instance.id) }
        if let failure { throw failure }
    }

    static let workload = Workload(environmentID: "env_test", serviceID: "svc_hello", serviceName: "hello")

    static func spec(_ fixture: Fixture, replicas: Int = 1, environment: [String: String] = [:]) -> DeploySpec {
        var spec = DeploySpec(workload: workload, image: fixture.image)
        spec.replicas = replicas
        spec.environment = environment
        spec.readiness = .http(path: "/health")
        spec.checkPeriod = .milliseconds(20)
        spec.readyTimeout = .seconds(20)
        spec.stopGrace = .milliseconds(200)
        return spec
    }

    @Test func aDeployServesOnReadyInstancesAndTheNextOneReplacesThem() async throws {
        try await Self.with { fixture in
            let first = try await fixture.cluster.deploy(Self.spec(fixture, replicas: 2))
            #expect(first.count == 2 && Set(first.map(\.port)).count == 2)
            for instance in first { #expect(try await LocalRuntimeTests.get(instance.port, "/health") != nil) }

            let second = try await fixture.cluster.deploy(Self.spec(fixture, replicas: 2, environment: ["VERSION": "2"]))
            #expect(Set(second.map(\.id)).isDisjoint(with: first.map(\.id)))
            for instance in second { #expect(try await LocalRuntimeTests.get(instance.port, "/health") != nil) }
            // The old ones were stopped and removed once the new ones were ready.
            for instance in first { #expect(try await LocalRuntimeTests.get(instance.port, "/health") == nil) }
            #expect(Set(try await fixture.cluster.runtime.list().map(\.id)) == Set(second.map(\.id)))
            let listed = try await fixture.cluster.instances(Self.workload)
            #expect(listed.map(\.0.id) == second.map(\.id) && listed.allSatisfy(\.running))
        }
    }

    @Test func aVersionThatNeverBecomesReadyLeavesTheOldOneServing() async throws {
        try await Self.with { fixture in
            let good = try await fixture.cluster.deploy(Self.spec(fixture))
            var broken = Self.spec(fixture)
            broken.readiness = .http(path: "/missing")
            broken.readyTimeout = .milliseconds(800)
            let error = await #expect(throws: ClusterFailure.self) { try await fixture.cluster.deploy(broken) }
            #expect(error?.kind == .notReady)
            #expect(error?.description.hasSuffix("was not ready in time: GET /missing answered 404") == true)
            #expect(try await LocalRuntimeTests.get(good[0].port, "/health") != nil)
            #expect(try await fixture.cluster.runtime.list().map(\.id) == [good[0].id])

            // A command that exits: reported at once with what it wrote, the old one still serves.
            var crashing = Self.spec(fixture)
            crashing.command = ["/bin/sh", "-c", "echo 'cannot open database' >&2; exit 3"]
            let crashed = await #expect(throws: ClusterFailure.self) { try await fixture.cluster.deploy(crashing) }
            #expect(crashed?.description.contains("exited before it was ready") == true)
            #expect(crashed?.description.contains("cannot open database") == true)
            #expect(try await LocalRuntimeTests.get(good[0].port, "/health") != nil)
        }
    }

    @Test func stopDeleteAndARestartMidDeploy() async throws {
        try await Self.with { fixture in
            let running = try await fixture.cluster.deploy(Self.spec(fixture))
            // A deploy the service did not finish (killed): its pending instance is on record and running.
            var record = LocalCluster.Record(workload: Self.workload, current: running)
            let orphan = Instance(id: "hello-orphan", port: try LocalCluster.freePort(), image: fixture.image)
            var orphanSpec = LocalRuntime.InstanceSpec(id: orphan.id, image: fixture.image, port: orphan.port)
            orphanSpec.insecureRegistry = true
            _ = try await fixture.cluster.runtime.start(orphanSpec)
            record.pending = [orphan]
            // And one it had replaced and was stopping when it was killed.
            let replaced = Instance(id: "hello-replaced", port: try LocalCluster.freePort(), image: fixture.image)
            var replacedSpec = LocalRuntime.InstanceSpec(id: replaced.id, image: fixture.image, port: replaced.port)
            replacedSpec.insecureRegistry = true
            _ = try await fixture.cluster.runtime.start(replacedSpec)
            record.retiring = [replaced]
            try JSONEncoder().encode(record).write(to: URL(fileURLWithPath: fixture.scratch + "/cluster/workloads/svc_hello.json"))

            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let restarted = try LocalCluster(directory: fixture.scratch + "/cluster", logger: logger)
            #expect(try await restarted.recover())
            #expect(try await restarted.runtime.list().map(\.id) == [running[0].id])
            #expect(!FileManager.default.fileExists(atPath: restarted.runtime.instanceDirectory(replaced.id)))
            #expect(try await LocalRuntimeTests.get(running[0].port, "/health") != nil)

            let stopped = try await restarted.stop(Self.workload, grace: .milliseconds(100))
            #expect(stopped.map(\.id) == [running[0].id])
            #expect(try await LocalRuntimeTests.get(running[0].port, "/health") == nil)
            #expect(try await restarted.instances(Self.workload).map(\.running) == [false])
            _ = try await restarted.delete(Self.workload, grace: .milliseconds(100))
            #expect(try await restarted.instances(Self.workload).isEmpty)
            #expect(!FileManager.default.fileExists(atPath: restarted.runtime.instanceDirectory(running[0].id)))
        }
    }

    @Test func deploysOfOneWorkloadTakeTurnsAndLeaveNoInstanceBehind() async throws {
        try await Self.with { fixture in
            let cluster = fixture.cluster
            let specs = (1...3).map { Self.spec(fixture, environment: ["VERSION": "\($0)"]) }
            // Three at once: each must see the instances of the one before it, and stop them.
            let results = await withTaskGroup(of: [Instance]?.self, returning: [[Instance]].self) { group in
                for spec in specs { group.addTask { try? await cluster.deploy(spec) } }
                return await group.reduce(into: []) { if let instances = $1 { $0.append(instances) } }
            }
            #expect(results.count == 3)
            let current = try await cluster.instances(Self.workload).map(\.0.id)
            #expect(current.count == 1)
            #expect(try await fixture.cluster.runtime.list().map(\.id) == current)
        }
    }

    @Test func anInstanceThatExitsIsStartedAgainWithGrowingBackoffUnlessStopped() async throws {
        try await Self.with { fixture in
            var spec = Self.spec(fixture)
            // Serves for a second, then exits (httpd without -f goes to the background; the shell is PID 1).
            spec.command = ["/bin/sh", "-c", "httpd -p 0.0.0.0:$PORT -h /app/www; sleep 1; exit 3"]
            spec.readiness = .tcp
            let instance = try #require(try await fixture.cluster.deploy(spec).first)
            let cluster = fixture.cluster
            func current() async throws -> Instance { try #require(try await cluster.instances(Self.workload).first?.0) }
            func waitExited() async throws {
                let deadline = ContinuousClock.now + .seconds(10)
                while try await cluster.runtime.state(instance.id)?.status == .running {
                    guard ContinuousClock.now < deadline else { throw TestFailure("\(instance.id) did not exit") }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }

            try await waitExited()
            let exit1 = Date()
            await cluster.superviseOnce(now: exit1)
            #expect(try await current().exitedAt == exit1.timeIntervalSince1970)
            #expect(try await current().lastExit == "exited with status 3")
            #expect(try await current().oomKilled == false)
            #expect(try await current().nextRestartAt == exit1.timeIntervalSince1970 + 1)
            // Not before its backoff…
            await cluster.superviseOnce(now: exit1.addingTimeInterval(0.5))
            #expect(try await current().restarts == nil)
            // …then started again, serving on the same port.
            await cluster.superviseOnce(now: exit1.addingTimeInterval(1))
            #expect(try await current().restarts == 1)
            #expect(try await cluster.runtime.state(instance.id)?.status == .running)
            let serving = ContinuousClock.now + .seconds(5)
            while await Probe.check(port: instance.port, readiness: .tcp, timeout: .seconds(1)) != .success {
                guard ContinuousClock.now < serving else { throw TestFailure("\(instance.id) does not accept connections after its restart") }
                try await Task.sleep(for: .milliseconds(20))
            }

            // It exits again: now it waits 2 s.
            try await waitExited()
            let exit2 = Date()
            await cluster.superviseOnce(now: exit2)
            #expect(try await current().nextRestartAt == exit2.timeIntervalSince1970 + 2)

            // Stopped on purpose: left alone.
            _ = try await cluster.stop(Self.workload, grace: .milliseconds(100))
            await cluster.superviseOnce(now: exit2.addingTimeInterval(60))
            #expect(try await cluster.runtime.state(instance.id) == nil)
            #expect(try await current().restarts == 1)
        }
    }

    @Test func anInstanceNoWorkloadNamesIsRemovedByTheSupervisionAndTheOthersStay() async throws {
        try await Self.with { fixture in
            let cluster = fixture.cluster
            let kept = try #require(try await cluster.deploy(Self.spec(fixture)).first)
            // As a removal that failed after the record let go of it would leave one: running, on no record.
            var orphan = LocalRuntime.InstanceSpec(id: "hello-0rphan00aa", image: kept.image, port: try LocalCluster.freePort())
            orphan.insecureRegistry = true
            _ = try await cluster.runtime.start(orphan)
            #expect(try await cluster.runtime.state(orphan.id)?.status == .running)
            await cluster.superviseOnce()
            #expect(try await cluster.runtime.state(orphan.id) == nil)
            #expect(!FileManager.default.fileExists(atPath: cluster.runtime.instanceDirectory(orphan.id)))
            #expect(try await cluster.runtime.list().map(\.id) == [kept.id])
        }
    }

    @Test func anInstanceOverItsMemoryLimitIsReportedOOMKilledAndTheStatusFollows() async throws {
        try await Self.with { fixture in
            var spec = Self.spec(fixture)
            spec.memoryMiB = 16
            // Serves, then grows a string until the kernel kills it.
            spec.command = ["/bin/sh", "-c", "httpd -p 0.0.0.0:$PORT -h /app/www; sleep 1; x=0123456789; while true; do x=\"$x$x\"; done"]
            spec.readiness = .tcp
            let cluster = fixture.cluster
            let (watcher, changes) = await cluster.watch()
            let instance = try #require(try await cluster.deploy(spec).first)
            #expect(await cluster.statuses().first?.status == .running)

            let deadline = ContinuousClock.now + .seconds(20)
            while try await cluster.runtime.state(instance.id)?.status == .running {
                guard ContinuousClock.now < deadline else { throw TestFailure("\(instance.id) was not killed over its 16 MiB limit") }
                try await Task.sleep(for: .milliseconds(50))
            }
            await cluster.superviseOnce()
            await cluster.publishChanges()
            let exited = try #require(try await cluster.instances(Self.workload).first?.0)
            #expect(exited.oomKilled == true)
            #expect(exited.lastExit == "killed by signal 9 (SIGKILL); OOMKilled: the kernel killed it for going over its 16 MiB memory limit")
            let status = try #require(await cluster.statuses().first)
            #expect(status.status == .error && status.instances.map(\.status) == [.error])

            // A watcher saw it running, then in error.
            _ = try await cluster.stop(Self.workload, grace: .milliseconds(100))
            await cluster.unwatch(watcher)
            var seen: [RunningStatus] = []
            for await change in changes { seen.append(change.status) }
            #expect(seen.first == .running)
            #expect(seen.contains(.error))
            #expect(seen.last == .stopped)
        }
    }

    @Test func readinessAndLivenessByExecAndAFailingLivenessRestartsTheInstance() async throws {
        try await Self.with { fixture in
            let cluster = fixture.cluster
            // Ready only once the file exists (the app writes it after half a second).
            var spec = Self.spec(fixture)
            spec.command = ["/bin/sh", "-c", "httpd -p 0.0.0.0:$PORT -h /app/www; sleep 0.5; touch /app/ready; while true; do sleep 1; done"]
            spec.readiness = .exec(command: ["/bin/sh", "-c", "test -f /app/ready"])
            var liveness = Liveness(check: .exec(command: ["/bin/sh", "-c", "test ! -f /app/www/sick"]))
            liveness.period = 1
            liveness.failureThreshold = 2
            spec.liveness = liveness
            let instance = try #require(try await cluster.deploy(spec).first)
            #expect(try await cluster.runtime.state(instance.id)?.status == .running)

            // Healthy: checked, nothing happens.
            let start = Date()
            await cluster.checkLiveness(now: start)
            #expect(try await cluster.instances(Self.workload).first?.0.exitedAt == nil)
            // Sick: the first failure is tolerated, the second (a period later) restarts it.
            _ = try await ChildProcess("/usr/sbin/runc", ["--root", fixture.scratch + "/cluster/runc", "exec", instance.id, "touch", "/app/www/sick"]).output()
            await cluster.checkLiveness(now: start.addingTimeInterval(1))
            #expect(try await cluster.instances(Self.workload).first?.0.exitedAt == nil)
            await cluster.checkLiveness(now: start.addingTimeInterval(1.5))  // not due yet
            #expect(try await cluster.instances(Self.workload).first?.0.exitedAt == nil)
            await cluster.checkLiveness(now: start.addingTimeInterval(2))
            let killed = try #require(try await cluster.instances(Self.workload).first?.0)
            #expect(killed.lastExit == "killed: liveness check failed 2 times in a row (exec `/bin/sh -c test ! -f /app/www/sick` exited with status 1)")
            #expect(try await cluster.runtime.state(instance.id) == nil)
            // The supervisor starts it again after its backoff.
            await cluster.superviseOnce(now: Date().addingTimeInterval(1))
            #expect(try await cluster.instances(Self.workload).first?.0.restarts == 1)
            #expect(try await cluster.runtime.state(instance.id)?.status == .running)

            // A version that never gets ready by exec fails with the command's status.
            var never = Self.spec(fixture)
            never.readiness = .exec(command: ["/bin/sh", "-c", "test -f /nonexistent"])
            never.readyTimeout = .seconds(1)
            let error = await #expect(throws: ClusterFailure.self) { try await cluster.deploy(never) }
            #expect(error?.description.contains("exec `/bin/sh -c test -f /nonexistent` exited with status 1") == true)
        }
    }

    @Test func grpcHealthChecksUseTheStandardHealthService() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        var router = RPCRouter()
        let health = router.registerStandardServices()
        health.setStatus(.serving, for: "shop.Cart")
        let server = RPCServer(host: "127.0.0.1", port: 0, router: router, logger: logger)
        let run = Task { try await server.run() }
        defer {
            server.shutdown()
            run.cancel()
        }
        let port = try await server.listeningAddress.port!
        let instance = Instance(id: "probe", port: port, image: "none")
        let runtime = try LocalRuntime(directory: FileManager.default.temporaryDirectory.appendingPathComponent("slipway-probe-\(UUID().uuidString)").path)
        #expect(await Probe.check(.grpc(service: ""), instance: instance, runtime: runtime, timeout: .seconds(2)) == .success)
        #expect(await Probe.check(.grpc(service: "shop.Cart"), instance: instance, runtime: runtime, timeout: .seconds(2)) == .success)
        health.setStatus(.notServing, for: "shop.Cart")
        #expect(await Probe.check(.grpc(service: "shop.Cart"), instance: instance, runtime: runtime, timeout: .seconds(2))
            == .failure("grpc.health.v1 Check of shop.Cart answered NOT_SERVING"))
        if case .failure(let reason) = await Probe.check(.grpc(service: "nope"), instance: instance, runtime: runtime, timeout: .seconds(2)) {
            #expect(reason.hasPrefix("grpc.health.v1 Check of nope: NOT_FOUND unknown service"))
        } else {
            Issue.record("an unknown service is not healthy")
        }
    }

    /// Samples the running instances (runc) while `body` runs: the largest count seen, and whether
    /// an instance of `old` and one of the others ever ran at the same moment.
    static func watching(_ cluster: LocalCluster, old: Set<String>, _ body: () async throws -> Void) async throws -> (most: Int, overlap: Bool, least: Int) {
        let stop = Atomic<Bool>(false)
        let sampler = Task {
            var most = 0, least = Int.max, overlap = false
            while !stop.load(ordering: .relaxed) {
                // A listing that fails (runc reading a state directory being written) is no sample.
                guard let states = try? await cluster.runtime.list() else { continue }
                let running = Set(states.filter { $0.status == .running }.map(\.id))
                most = max(most, running.count)
                least = min(least, running.count)
                if !running.isDisjoint(with: old) && !running.subtracting(old).isEmpty { overlap = true }
                try? await Task.sleep(for: .milliseconds(5))
            }
            return (most, overlap, least)
        }
        do {
            try await body()
        } catch {
            stop.store(true, ordering: .relaxed)
            _ = await sampler.value
            throw error
        }
        stop.store(true, ordering: .relaxed)
        return await sampler.value
    }

    @Test func aRollingUpdateKeepsWithinItsSurgeAndRecreateNeverOverlaps() async throws {
        try await Self.with { fixture in
            let cluster = fixture.cluster
            let first = try await cluster.deploy(Self.spec(fixture, replicas: 3))

            // One extra at a time, none unavailable: never more than 4, never fewer than 3.
            var rolling = Self.spec(fixture, replicas: 3, environment: ["VERSION": "2"])
            rolling.strategy = .rolling(maxSurge: 1, maxUnavailable: 0)
            var second: [Instance] = []
            let seen = try await Self.watching(cluster, old: Set(first.map(\.id))) {
                second = try await cluster.deploy(rolling)
            }
            #expect(second.count == 3 && Set(second.map(\.id)).isDisjoint(with: first.map(\.id)))
            #expect(seen.most == 4, "at most replicas + max surge at once (saw \(seen.most))")
            #expect(seen.least >= 3, "never fewer than replicas - max unavailable (saw \(seen.least))")
            #expect(seen.overlap, "old and new served side by side")
            #expect(try await cluster.runtime.list().map(\.id).sorted() == second.map(\.id).sorted())

            // None extra, one unavailable at a time: never more than 3, never fewer than 2.
            var tight = Self.spec(fixture, replicas: 3, environment: ["VERSION": "3"])
            tight.strategy = .rolling(maxSurge: 0, maxUnavailable: 1)
            var third: [Instance] = []
            let tightSeen = try await Self.watching(cluster, old: Set(second.map(\.id))) {
                third = try await cluster.deploy(tight)
            }
            #expect(third.count == 3)
            #expect(tightSeen.most == 3 && tightSeen.least >= 2, "\(tightSeen)")

            // Recreate: the old ones are gone before a new one runs.
            var recreate = Self.spec(fixture, replicas: 2, environment: ["VERSION": "4"])
            recreate.strategy = .recreate
            var fourth: [Instance] = []
            let recreateSeen = try await Self.watching(cluster, old: Set(third.map(\.id))) {
                fourth = try await cluster.deploy(recreate)
            }
            #expect(fourth.count == 2)
            #expect(!recreateSeen.overlap && recreateSeen.most <= 3)

            // A rolling update whose new version is never ready puts everything back as it was.
            var broken = Self.spec(fixture, replicas: 2, environment: ["VERSION": "5"])
            broken.strategy = .rolling(maxSurge: 0, maxUnavailable: 1)
            broken.readiness = .http(path: "/missing")
            broken.readyTimeout = .seconds(1)
            await #expect(throws: ClusterFailure.self) { try await cluster.deploy(broken) }
            let after = try await cluster.instances(Self.workload)
            #expect(after.map(\.0.id).sorted() == fourth.map(\.id).sorted())
            let deadline = ContinuousClock.now + .seconds(10)
            for instance in fourth {
                while try await LocalRuntimeTests.get(instance.port, "/health") == nil {
                    guard ContinuousClock.now < deadline else { throw TestFailure("\(instance.id) does not serve again after the failed rollout") }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
            #expect(try await cluster.runtime.list().count == 2)
        }
    }

    @Test func badWorkloadsAreRefused() async throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-cluster-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let cluster = try LocalCluster(directory: scratch, logger: Logger(label: "test"))
        var spec = DeploySpec(workload: .init(environmentID: "e", serviceID: "s", serviceName: "Bad_Name"), image: "x")
        var error = await #expect(throws: ClusterFailure.self) { try await cluster.deploy(spec) }
        #expect(error?.kind == .invalid && error?.description.contains("service_name") == true)
        spec.workload.serviceName = "ok"
        spec.replicas = 51
        error = await #expect(throws: ClusterFailure.self) { try await cluster.deploy(spec) }
        #expect(error?.description.contains("replicas") == true)
        #expect(LocalRuntime.pullReference("127.0.0.1:5000/env/web:abc@sha256:00") == "127.0.0.1:5000/env/web@sha256:00")
        #expect(LocalRuntime.pullReference("127.0.0.1:5000/env/web:abc") == "127.0.0.1:5000/env/web:abc")
    }
}
