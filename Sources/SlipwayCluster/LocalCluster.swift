import Foundation
import Logging
import SlipwayIsolation
import SlipwayRPC
import SlipwayServiceKit

#if canImport(Glibc)
import Glibc
#endif

/// The local driver: each workload (one service of one environment) is a set of instances run by
/// ``LocalRuntime``. A deploy starts the new version's instances on fresh loopback ports, waits
/// until they are ready, records them as the workload's, and only then stops the old ones; new
/// instances that are not ready in time are removed and the old ones keep serving.
///
/// Every workload's instances are written to `<directory>/workloads/<service id>.json` before they
/// are started (as pending) and when they become current, so a cluster service killed mid-deploy
/// removes the pending ones on restart and keeps the current ones (they run on without it).
public actor LocalCluster {
    /// What is on disk for a workload.
    struct Record: Codable, Equatable {
        var workload: Workload
        var current: [Instance] = []
        /// Started by a deploy that has not finished: removed if the service restarts meanwhile.
        var pending: [Instance] = []
        /// Stopped on purpose: the supervisor leaves it alone until the next deploy.
        var stopped: Bool? = nil
        /// The load balancer sends it traffic (its backends must follow the current instances).
        var routed: Bool? = nil
        /// The memory limit of its instances, for exit reasons.
        var memoryMiB: Int? = nil
        /// Replaced by a deploy, being stopped: removed at start if the service died meanwhile.
        var retiring: [Instance]? = nil
        var liveness: Liveness? = nil
    }

    public static let maxReplicas = 50
    /// The longest wait before an instance that keeps exiting is started again, in seconds.
    public static let maxBackoff: Double = 300

    nonisolated let runtime: LocalRuntime
    nonisolated let directory: String
    let logger: Logger

    /// Where public workloads' traffic is switched (the network service); nil: nothing routes to them.
    let traffic: (any TrafficSwitch)?
    /// Ships the instances' output to the logs service; nil: it stays in their files.
    public nonisolated let applicationLogs: ApplicationLogs?

    /// Isolated instances' networks (nil: instances share the host's network, unisolated).
    public nonisolated let network: EnvironmentNetworks?
    /// The port every isolated instance listens on (`PORT`), in its own network namespace — the
    /// Kubernetes driver's too.
    public static let isolatedPort = 8080

    /// `logs`: the logs service, where the instances' output goes (nil: it stays in their files).
    /// `network`: isolation (nil: the host's network).
    public init(directory: String, traffic: (any TrafficSwitch)? = nil, logs: RPCClient? = nil, registryAuthFile: String? = nil,
                network: EnvironmentNetworks? = nil, outputBacklogBytes: UInt64 = ApplicationLogs.defaultMaxBacklogBytes, logger: Logger) throws {
        self.directory = directory
        self.traffic = traffic
        self.network = network
        let runtime = try LocalRuntime(directory: directory, registryAuthFile: registryAuthFile, network: network)
        self.runtime = runtime
        self.applicationLogs = try logs.map { try ApplicationLogs(directory: directory + "/applogs", runtime: runtime, client: $0, maxBacklogBytes: outputBacklogBytes, logger: logger) }
        self.logger = logger
        try FileManager.default.createDirectory(atPath: directory + "/workloads", withIntermediateDirectories: true)
    }

    /// After a restart: instances a deploy had started but not finished are removed; current ones
    /// are left running (they never depended on this process).
    /// Returns false when some workload could not be put right yet (the load balancer did not
    /// answer); ``supervise(every:)`` tries again.
    @discardableResult
    public func recover() async throws -> Bool {
        var complete = true
        if let network {
            // Addresses handed out to instances that never made it onto a record go back.
            var known = Set<String>()
            for file in try FileManager.default.contentsOfDirectory(atPath: directory + "/workloads") where file.hasSuffix(".json") {
                guard let record = try? load(String(file.dropLast(5))) else { continue }
                known.formUnion((record.current + record.pending + (record.retiring ?? [])).map(\.id))
            }
            await network.reconcile(keeping: known)
        }
        for file in try FileManager.default.contentsOfDirectory(atPath: directory + "/workloads") where file.hasSuffix(".json") {
            guard var record = try? load(String(file.dropLast(5))) else { continue }
            // Killed while the replaced instances stopped: they go now.
            if let retiring = record.retiring, !retiring.isEmpty {
                for instance in retiring { try? await Self.remove(instance.id, runtime, applicationLogs) }
                record.retiring = nil
                try save(record)
            }
            guard !record.pending.isEmpty else { continue }
            // Killed after traffic moved to the new instances but before they were recorded as
            // current: traffic goes back to the current ones before the new ones go. If the load
            // balancer cannot be told, the new ones stay (they may be what it sends traffic to).
            if record.routed == true, let traffic {
                do {
                    try await traffic.route(record.workload, to: record.current.map(\.address), drain: .seconds(30))
                } catch {
                    logger.warning("could not route traffic back to the current instances; retrying", metadata: ["service": "\(record.workload.serviceID)", "error": "\(error)"])
                    complete = false
                    continue
                }
            }
            for instance in record.pending {
                try? await Self.remove(instance.id, runtime, applicationLogs)
            }
            logger.warning("removed instances of an unfinished deploy", metadata: ["service": "\(record.workload.serviceID)", "count": "\(record.pending.count)"])
            record.pending = []
            try save(record)
        }
        recovered = complete
        return complete
    }

    // MARK: Deploy

    public func deploy(_ spec: DeploySpec) async throws(ClusterFailure) -> [Instance] {
        try Self.validate(spec.workload)
        await turns.acquire(spec.workload.serviceID)
        defer { turns.release(spec.workload.serviceID) }
        do {
            let instances = try await deployHoldingLock(spec)
            await publishChanges()
            return instances
        } catch {
            await publishChanges()
            throw error
        }
    }

    private func deployHoldingLock(_ spec: DeploySpec) async throws(ClusterFailure) -> [Instance] {
        guard (1...Self.maxReplicas).contains(spec.replicas) else {
            throw ClusterFailure(kind: .invalid, description: "replicas must be 1 to \(Self.maxReplicas), got \(spec.replicas)")
        }
        guard !spec.image.isEmpty else { throw ClusterFailure(kind: .invalid, description: "image is required") }
        if spec.isPublic && traffic == nil {
            throw ClusterFailure(kind: .invalid, description: "this cluster service routes no traffic (started with --cluster-traffic none): deploy it with public = false")
        }
        if case .rolling(let surge, let unavailable)? = spec.strategy, surge < 0 || unavailable < 0 || surge + unavailable == 0 {
            throw ClusterFailure(kind: .invalid, description: "rolling update: max_surge and max_unavailable must not both be 0 (nothing could move)")
        }
        var record = (try? load(spec.workload.serviceID)) ?? Record(workload: spec.workload)
        record.workload = spec.workload
        record.memoryMiB = spec.memoryMiB
        record.liveness = spec.liveness
        let insecure = spec.insecureRegistry || Self.isLoopback(spec.image)
        let pulled: String
        do {
            pulled = try await runtime.pull(spec.image, insecure: insecure)
        } catch {
            throw ClusterFailure(kind: .runtime, description: "\(error)")
        }
        // A workload stopped on purpose has no instance serving: its stopped ones are not part of
        // the rollout (never routed to, never started again), and go once the deploy succeeds.
        let stoppedBefore = record.stopped == true ? record.current : []
        var rollout = Rollout(old: stoppedBefore.isEmpty ? record.current : [])
        do {
            if !spec.isPublic, record.routed == true {
                // No longer public: out of the load balancer before the old instances stop.
                try await unroute(record)
                record.routed = nil
                try save(record)
            }
            if spec.isPublic {
                record.routed = true
                try save(record)
            }
            var plan = RolloutPlan(replicas: spec.replicas, strategy: spec.strategy, old: rollout.old.count)
            steps: while true {
                switch plan.next() {
                case .stopOld(let count): try await park(count, &rollout, &record, spec)
                case .startNew(let count): try await startBatch(count, &rollout, &record, spec, pulled: pulled, insecure: insecure)
                case .route: try await route(rollout, spec)
                case .done: break steps
                }
            }
        } catch {
            // Not ready (or not started, or the load balancer refused): the old ones that were
            // stopped start again (and are checked), traffic goes back to the old ones, and only
            // then do the new ones go. If the load balancer cannot be told, the new ones stay pending
            // and the next start of the service (or its supervision) retries.
            for instance in rollout.parked {
                _ = try? await runtime.restart(instance.id)
                try? await Self.waitReady(instance, spec, runtime: runtime, deadline: ContinuousClock.now + spec.readyTimeout)
            }
            rollout.old += rollout.parked
            rollout.parked = []
            var routedBack = true
            if spec.isPublic, let traffic {
                do {
                    try await traffic.route(spec.workload, to: rollout.old.map(\.address), drain: spec.stopGrace)
                } catch {
                    routedBack = false
                }
            }
            record.current = stoppedBefore.isEmpty ? rollout.old : stoppedBefore
            record.retiring = nil
            if routedBack {
                for instance in record.pending + rollout.ready { try? await Self.remove(instance.id, runtime, applicationLogs) }
                record.pending = []
            } else {
                record.pending += rollout.ready
                recovered = false
            }
            try? save(record)
            // A full disk is the cause to name, whatever the tool that hit it said.
            let disk = DiskSpace.fullNote(directory)
            if var failure = error as? ClusterFailure {
                failure.description += disk
                throw failure
            }
            throw ClusterFailure(kind: .runtime, description: "\(error)\(disk)")
        }
        // Done: the old ones were stopped along the way; now they go for good.
        record.current = rollout.ready
        record.stopped = nil
        do {
            try save(record)
        } catch {
            throw ClusterFailure(kind: .runtime, description: "cannot record the new instances: \(error)")
        }
        let (runtime, applicationLogs) = (runtime, applicationLogs)
        try? await Self.each(rollout.parked + stoppedBefore) { instance in try await Self.remove(instance.id, runtime, applicationLogs) }
        record.retiring = nil
        try? save(record)
        return record.current
    }

    /// Where a deploy is: the old instances still serving, the ones it stopped (kept until the end,
    /// to be started again if it fails), and the new ones ready.
    struct Rollout {
        var old: [Instance]
        var parked: [Instance] = []
        var ready: [Instance] = []
    }

    /// Starts `count` new instances (on record as pending first) and waits until all are ready; they
    /// join the serving ones and traffic is pointed at them.
    private func startBatch(_ count: Int, _ rollout: inout Rollout, _ record: inout Record, _ spec: DeploySpec, pulled: String, insecure: Bool) async throws {
        var batch: [(Instance, LocalRuntime.InstanceSpec)] = []
        // Ports are found one by one: one found twice in a batch is found again.
        var ports = Set((rollout.old + rollout.ready).map(\.port))
        for _ in 0..<count {
            let id = Self.newInstanceID(spec.workload.serviceName)
            var instance: Instance
            var isolation: LocalRuntime.Isolation?
            if let network {
                // Its address is on record (the network's) before the instance is.
                let attachment: EnvironmentNetworks.Attachment
                do {
                    attachment = try await network.attach(id, environmentID: spec.workload.environmentID)
                } catch {
                    throw ClusterFailure(kind: .runtime, description: "cannot isolate instance \(id): \(error)")
                }
                instance = Instance(id: id, port: Self.isolatedPort, image: spec.image)
                instance.host = attachment.address
                isolation = LocalRuntime.Isolation(attachment: attachment, hosts: hostsFile(spec.workload.environmentID, own: instance), resolvConf: network.resolvConf())
            } else {
                var port = try Self.freePort()
                while !ports.insert(port).inserted { port = try Self.freePort() }
                instance = Instance(id: id, port: port, image: spec.image)
            }
            instance.startedAt = Date().timeIntervalSince1970
            record.pending.append(instance)
            applicationLogs?.register(instance.id, workload: spec.workload)
            var instanceSpec = LocalRuntime.InstanceSpec(id: instance.id, image: spec.image, port: instance.port)
            instanceSpec.insecureRegistry = insecure
            instanceSpec.isolation = isolation
            instanceSpec.environment = spec.environment
            if isolation != nil { instanceSpec.environment[Self.internalHostVariable] = spec.workload.serviceName }
            instanceSpec.cpuMillicores = spec.cpuMillicores
            instanceSpec.memoryMiB = spec.memoryMiB
            instanceSpec.command = spec.command
            batch.append((instance, instanceSpec))
        }
        // On record before any of them starts.
        try save(record)
        // Started and checked all at once; the first failure fails the deploy.
        let deadline = ContinuousClock.now + spec.readyTimeout
        let runtime = self.runtime
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (instance, instanceSpec) in batch {
                group.addTask {
                    _ = try await runtime.start(instanceSpec, pulled: pulled)
                    try await Self.waitReady(instance, spec, runtime: runtime, deadline: deadline)
                }
            }
            try await group.waitForAll()
        }
        let ids = Set(batch.map(\.0.id))
        record.pending.removeAll { ids.contains($0.id) }
        rollout.ready += batch.map(\.0)
        record.current = rollout.old + rollout.ready
        try save(record)
    }

    /// Takes `count` old instances out of traffic (the load balancer drains them), then stops them;
    /// they are kept on record as retiring until the deploy ends.
    private func park(_ count: Int, _ rollout: inout Rollout, _ record: inout Record, _ spec: DeploySpec) async throws {
        let leaving = Array(rollout.old.suffix(count))
        var next = rollout
        next.old.removeLast(leaving.count)
        // Traffic first: if the load balancer refuses, nothing has changed.
        try await route(next, spec)
        rollout = next
        rollout.parked += leaving
        record.current = rollout.old + rollout.ready
        record.retiring = rollout.parked
        try save(record)
        let (runtime, logger, grace) = (runtime, logger, spec.stopGrace)
        await withTaskGroup(of: Void.self) { group in
            for instance in leaving {
                group.addTask {
                    do {
                        try await runtime.stop(instance.id, grace: grace)
                    } catch {
                        logger.warning("could not stop an old instance", metadata: ["instance": "\(instance.id)", "error": "\(error)"])
                    }
                }
            }
        }
    }

    /// Points a public workload's traffic at the instances serving now; returns once requests in
    /// flight to the others have finished.
    private func route(_ rollout: Rollout, _ spec: DeploySpec) async throws {
        guard spec.isPublic, let traffic else { return }
        do {
            try await traffic.route(spec.workload, to: (rollout.old + rollout.ready).map(\.address), drain: spec.stopGrace)
        } catch {
            throw ClusterFailure(kind: .runtime, description: "the load balancer did not take the change: \(error)")
        }
    }

    private static func waitReady(_ instance: Instance, _ spec: DeploySpec, runtime: LocalRuntime, deadline: ContinuousClock.Instant) async throws {
        var lastError = "no readiness check answered yet"
        while true {
            switch await Probe.check(spec.readiness, instance: instance, runtime: runtime, timeout: spec.checkTimeout) {
            case .success: return
            case .failure(let reason): lastError = reason
            }
            guard let state = try await runtime.state(instance.id), state.status == .running else {
                let output = (try? String(contentsOfFile: runtime.stderrPath(instance.id), encoding: .utf8)).map { String($0.suffix(300)) } ?? ""
                throw ClusterFailure(kind: .notReady, description: "instance \(instance.id) exited before it was ready\(output.isEmpty ? "" : ": \(output)")")
            }
            guard ContinuousClock.now < deadline else {
                throw ClusterFailure(kind: .notReady, description: "instance \(instance.id) was not ready in time: \(lastError)")
            }
            try await Task.sleep(for: spec.checkPeriod)
        }
    }

    // MARK: Stop, delete, list

    /// Stops the workload's instances (kept on record as stopped, so a restart can deploy again).
    public func stop(_ workload: Workload, grace: Duration) async throws(ClusterFailure) -> [Instance] {
        try Self.validate(workload)
        await turns.acquire(workload.serviceID)
        defer { turns.release(workload.serviceID) }
        guard var record = try? load(workload.serviceID) else { return [] }
        // On record first: the supervisor must not start them again.
        record.stopped = true
        try? save(record)
        await publishChanges()
        try await unroute(record)
        try await Self.each(record.current) { [runtime] instance in
            try await runtime.stop(instance.id, grace: grace)
        }
        await publishChanges()
        return record.current
    }

    public func delete(_ workload: Workload, grace: Duration) async throws(ClusterFailure) -> [Instance] {
        try Self.validate(workload)
        await turns.acquire(workload.serviceID)
        defer { turns.release(workload.serviceID) }
        guard let record = try? load(workload.serviceID) else { return [] }
        try await unroute(record)
        try await Self.each(record.current + record.pending) { [runtime, applicationLogs] instance in
            try await runtime.stop(instance.id, grace: grace)
            try await Self.remove(instance.id, runtime, applicationLogs)
        }
        try? FileManager.default.removeItem(atPath: path(workload.serviceID))
        if network != nil { refreshHosts(workload.environmentID) }
        await publishChanges()
        return record.current
    }

    /// Takes a routed workload out of the load balancer (requests in flight finish) before its
    /// instances stop.
    private func unroute(_ record: Record) async throws(ClusterFailure) {
        guard record.routed == true, let traffic else { return }
        do {
            try await traffic.route(record.workload, to: [], drain: .seconds(30))
        } catch {
            throw ClusterFailure(kind: .runtime, description: "the load balancer did not let go of \(record.workload.serviceName): \(error)")
        }
    }

    /// The workload's current instances and whether each runs.
    public func instances(_ workload: Workload) async throws(ClusterFailure) -> [(Instance, running: Bool)] {
        try Self.validate(workload)
        guard let record = try? load(workload.serviceID) else { return [] }
        var result: [(Instance, running: Bool)] = []
        for instance in record.current {
            let state = try? await runtime.state(instance.id)
            result.append((instance, state?.status == .running))
        }
        return result
    }

    // MARK: One change of a workload at a time

    /// The actor is reentrant: while a deploy awaits its instances, another call for the same
    /// workload would read and rewrite the same record. Calls for one workload wait their turn
    /// (in order); different workloads do not wait for each other.
    let turns = Turns()
    var watchers: [UUID: AsyncStream<WorkloadStatus>.Continuation] = [:]
    var livenessFailures: [String: Int] = [:]
    /// An unfinished deploy's instances could not be put right yet.
    var recovered = true
    var lastLivenessCheck: [String: Double] = [:]
    var published: [String: WorkloadStatus] = [:]

    /// Removes an instance; its output first moves aside, to be shipped to its end.
    static func remove(_ id: String, _ runtime: LocalRuntime, _ logs: ApplicationLogs?) async throws {
        logs?.retire(id)
        try await runtime.remove(id)
    }

    // MARK: Helpers

    /// Runs `body` for every instance at once (their grace periods overlap); the first failure is reported.
    static func each(_ instances: [Instance], _ body: @escaping @Sendable (Instance) async throws -> Void) async throws(ClusterFailure) {
        let failures = await withTaskGroup(of: String?.self, returning: [String].self) { group in
            for instance in instances {
                group.addTask {
                    do {
                        try await body(instance)
                        return nil
                    } catch {
                        return "\(instance.id): \(error)"
                    }
                }
            }
            return await group.reduce(into: []) { if let failure = $1 { $0.append(failure) } }
        }
        if let first = failures.first { throw ClusterFailure(kind: .runtime, description: "cannot stop \(first)") }
    }

    func path(_ serviceID: String) -> String { directory + "/workloads/" + serviceID + ".json" }

    func load(_ serviceID: String) throws -> Record {
        try JSONDecoder().decode(Record.self, from: Data(contentsOf: URL(fileURLWithPath: path(serviceID))))
    }

    /// Written to a temporary file, flushed and renamed: a crash leaves the old record or the new one.
    /// Isolated instances of its environment then learn who serves now (``refreshHosts(_:)``).
    func save(_ record: Record) throws {
        do {
            try AtomicFile.write(try JSONEncoder().encode(record), to: path(record.workload.serviceID))
        } catch let failure as AtomicFile.Failure {
            throw ClusterFailure(kind: .runtime, description: failure.description)
        }
        if network != nil { refreshHosts(record.workload.environmentID) }
    }

    static func validate(_ workload: Workload) throws(ClusterFailure) {
        for (value, field) in [(workload.environmentID, "environment_id"), (workload.serviceID, "service_id")] {
            // What the logs service accepts in a stream key, so application logs can always be stored.
            guard InputGrammar.isPlatformID(value), value != ".", value != ".." else {
                throw ClusterFailure(kind: .invalid, description: "workload.\(field) must be 1 to 128 of A-Z, a-z, 0-9, '.', '_' and '-'")
            }
        }
        let name = workload.serviceName.utf8
        guard !name.isEmpty, name.count <= 40, name.allSatisfy({ ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 }), name.first! >= 97 else {
            throw ClusterFailure(kind: .invalid, description: "workload.service_name must be a DNS label of at most 40 characters, got \"\(workload.serviceName.prefix(60))\"")
        }
    }

    static func newInstanceID(_ serviceName: String) -> String {
        serviceName + "-" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(10)
    }

    static func isLoopback(_ image: String) -> Bool {
        image.hasPrefix("127.") || image.hasPrefix("localhost") || image.hasPrefix("[::1]")
    }

    /// A loopback port nothing listens on now.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw ClusterFailure(kind: .runtime, description: "no free loopback port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
