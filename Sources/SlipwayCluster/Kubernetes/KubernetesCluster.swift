import Foundation
import SlipwayRegistry
import Logging
import SlipwayProtos
import SlipwayRPC
import SlipwayServiceKit

/// The cluster service's API on a Kubernetes cluster (`--cluster-driver kubernetes`): a deploy is
/// the workload's objects applied and its rollout followed (``KubernetesDriver``); instances are its
/// pods; running status is read from them every `interval` for watchers; pod logs are followed into
/// the logs service.
///
/// The workloads this service deployed are kept in `<directory>/kubernetes-workloads.json` (written
/// before they are applied), so a restarted service knows what to watch and whose logs to follow.
public actor KubernetesCluster: ClusterDriver {
    let driver: KubernetesDriver
    let directory: String
    let logs: RPCClient?
    let logger: Logger
    let interval: Duration
    private var workloads: [String: Workload] = [:]
    private var watchers: [UUID: AsyncStream<WorkloadStatus>.Continuation] = [:]
    private var published: [String: WorkloadStatus] = [:]
    /// Per pod: the timestamp of the last log line shipped (RFC 3339, nanoseconds as 9 digits).
    private var logCursors: [String: String] = [:]
    /// What the registry said of each image's user (up to 1,000 images; then it is asked again).
    private var imageRunsAsNonRoot: [String: Bool] = [:]

    /// The platform registry's credentials, given to each environment namespace as its pull Secret.
    let pullCredentials: Data?
    /// Where the environments' NetworkPolicy draws its lines.
    public struct Boundaries: Sendable {
        public var platformNamespace = "slipway"
        public var ingressNamespace = "ingress-nginx"
        public var internalNetworks: [String] = []
        public init() {}
    }
    let boundaries: Boundaries

    public init(
        driver: KubernetesDriver, directory: String, logs: RPCClient?, pullCredentials: Data? = nil, boundaries: Boundaries = Boundaries(),
        interval: Duration = .seconds(2), logger: Logger
    ) throws {
        self.driver = driver
        self.pullCredentials = pullCredentials
        self.boundaries = boundaries
        self.directory = directory
        self.logs = logs
        self.interval = interval
        self.logger = logger
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        if let data = FileManager.default.contents(atPath: directory + "/kubernetes-workloads.json") {
            workloads = try JSONDecoder().decode([String: Workload].self, from: data)
        }
        if let data = FileManager.default.contents(atPath: directory + "/kubernetes-log-cursors.json") {
            logCursors = (try? JSONDecoder().decode([String: String].self, from: data)) ?? [:]
        }
    }

    /// What the manifests are made from: the deploy's spec in Kubernetes' terms. Every variable goes
    /// to the Secret (the cluster API does not tell variables from secrets).
    static func input(_ spec: DeploySpec) -> KubernetesManifests.Input {
        var input = KubernetesManifests.Input(workload: spec.workload, environmentName: spec.workload.environmentID, image: spec.image)
        input.secrets = spec.environment
        input.replicas = spec.replicas
        if let cpu = spec.cpuMillicores { input.cpuMillicores = cpu }
        if let memory = spec.memoryMiB { input.memoryMiB = memory }
        input.readiness = probe(spec.readiness)
        if let liveness = spec.liveness {
            input.liveness = probe(liveness.check)
            input.periodSeconds = max(1, Int(liveness.period))
            input.timeoutSeconds = max(1, Int(liveness.timeout))
            input.failureThreshold = liveness.failureThreshold
            input.initialDelaySeconds = Int(liveness.initialDelay)
        }
        switch spec.strategy {
        case .rolling(let surge, let unavailable)?:
            input.maxSurge = "\(surge)"
            input.maxUnavailable = "\(unavailable)"
        case .recreate?:
            input.recreate = true
        case nil:
            input.maxSurge = "100%"
            input.maxUnavailable = "0"
        }
        return input
    }

    static func probe(_ check: Readiness) -> KubernetesManifests.Probe {
        switch check {
        case .http(let path): .http(path: path)
        case .tcp: .tcp
        case .grpc(let service): .grpc(service: service)
        case .exec(let command): .exec(command: command)
        }
    }

    /// Whether the image runs as a numeric user other than 0 (its config's `User`), so that its
    /// pods can be told `runAsNonRoot` (the kubelet checks a number, not a name). False when it
    /// does not or the registry cannot tell (the pods then run without that check; said in the log).
    func runsAsNonRoot(_ spec: DeploySpec) async -> Bool {
        if let known = imageRunsAsNonRoot[spec.image] { return known }
        guard let reference = ImageReference(parsing: spec.image) else { return false }
        let credentials = pullCredentials.flatMap { RegistryClient.Credentials(authFile: $0, host: reference.host) }
        let client = RegistryClient(host: reference.host, insecure: spec.insecureRegistry || LocalCluster.isLoopback(spec.image),
                                    credentials: credentials, timeout: .seconds(10))
        do {
            let nonRoot = Self.isNonRootUser(try await client.imageUser(repository: reference.repository, reference: reference.reference))
            if imageRunsAsNonRoot.count >= 1000 { imageRunsAsNonRoot.removeAll() }
            imageRunsAsNonRoot[spec.image] = nonRoot
            return nonRoot
        } catch {
            logger.warning("cannot read the image's user: its pods run without runAsNonRoot", metadata: ["image": "\(spec.image)", "error": "\(error)"])
            return false
        }
    }

    /// `1000`, `1000:1000`: yes; `0`, `root`, `app`, "" (root): no.
    static func isNonRootUser(_ user: String) -> Bool {
        guard let uid = user.split(separator: ":", omittingEmptySubsequences: false).first.flatMap({ UInt32($0) }) else { return false }
        return uid != 0
    }

    static func input(_ workload: Workload) -> KubernetesManifests.Input {
        KubernetesManifests.Input(workload: workload, environmentName: workload.environmentID, image: "")
    }

    // MARK: ClusterDriver

    public func deploy(_ spec: DeploySpec) async throws -> [Instance] {
        try LocalCluster.validate(spec.workload)
        workloads[spec.workload.serviceID] = spec.workload
        try saveWorkloads()
        do {
            var input = Self.input(spec)
            input.pullCredentials = pullCredentials
            input.platformNamespace = boundaries.platformNamespace
            input.ingressNamespace = boundaries.ingressNamespace
            input.internalNetworks = boundaries.internalNetworks
            input.runAsNonRoot = await runsAsNonRoot(spec)
            _ = try await driver.deploy(input, timeout: spec.readyTimeout)
        } catch let error as KubernetesError where ["Timeout", "ProgressDeadlineExceeded"].contains(error.reason) {
            // Not ready: the rollout's own failure. Other errors are the API server's (mapped by the RPC layer).
            throw ClusterFailure(kind: .notReady, description: "\(error)")
        }
        return try await instances(spec.workload).map(\.0)
    }

    public func stop(_ workload: Workload, grace: Duration) async throws -> [Instance] {
        try LocalCluster.validate(workload)
        let before = try await instances(workload).map(\.0)
        do {
            try await driver.client.scale(namespace: KubernetesManifests.namespace(for: workload.environmentID), deployment: workload.serviceName, replicas: 0)
        } catch let error as KubernetesError where error.code == 404 {
            return []
        }
        return before
    }

    public func delete(_ workload: Workload, grace: Duration) async throws -> [Instance] {
        try LocalCluster.validate(workload)
        let before = (try? await instances(workload).map(\.0)) ?? []
        try await driver.delete(Self.input(workload))
        workloads[workload.serviceID] = nil
        try saveWorkloads()
        return before
    }

    public func instances(_ workload: Workload) async throws -> [(Instance, running: Bool)] {
        try await podObjects(workload).map { pod in
            let status = KubernetesStatus.pod(pod)
            return (Self.instance(pod, status), status.status == .running)
        }
    }

    public func statuses() async -> [WorkloadStatus] {
        var result: [WorkloadStatus] = []
        for workload in workloads.values.sorted(by: { $0.serviceID < $1.serviceID }) {
            guard let pods = try? await podObjects(workload) else { continue }
            let read = pods.map(KubernetesStatus.pod)
            let instances = zip(pods, read).map { pod, status in
                InstanceStatus(instance: Self.instance(pod, status), running: status.status == .running, status: status.status)
            }
            result.append(WorkloadStatus(workload: workload, status: KubernetesStatus.workload(read), instances: instances))
        }
        return result
    }

    public func watch() -> (id: UUID, changes: AsyncStream<WorkloadStatus>) {
        let id = UUID()
        let (stream, continuation) = AsyncStream<WorkloadStatus>.makeStream(bufferingPolicy: .bufferingNewest(LocalCluster.maxWatchBuffer))
        watchers[id] = continuation
        return (id, stream)
    }

    public func unwatch(_ id: UUID) {
        watchers.removeValue(forKey: id)?.finish()
    }

    // MARK: Background

    /// Until cancelled: every `interval`, publishes status changes and ships new pod log lines.
    public func run() async {
        while !Task.isCancelled {
            await publishChanges()
            await followLogs()
            try? await Task.sleep(for: interval)
        }
    }

    func publishChanges() async {
        for status in await statuses() where published[status.workload.serviceID] != status {
            published[status.workload.serviceID] = status
            for watcher in watchers.values { watcher.yield(status) }
        }
    }

    /// New lines of every pod of every workload, after the last one shipped (by timestamp), sent to
    /// the workload's application stream with the pod as the instance.
    func followLogs() async {
        guard let logs else { return }
        var seen = Set<String>()
        var complete = true
        for workload in workloads.values {
            let namespace = KubernetesManifests.namespace(for: workload.environmentID)
            guard let pods = try? await podObjects(workload) else {
                complete = false
                continue
            }
            for pod in pods {
                guard let name = (pod["metadata"] as? [String: Any])?["name"] as? String else { continue }
                seen.insert(name)
                let cursor = logCursors[name]
                guard let lines = try? await driver.client.podLog(namespace: namespace, pod: name, since: cursor) else { continue }
                let fresh = lines.filter { cursor == nil || Self.normalized($0.timestamp) > cursor! }
                for start in stride(from: 0, to: fresh.count, by: ApplicationLogs.maxLinesPerBatch) {
                    let chunk = Array(fresh[start..<min(fresh.count, start + ApplicationLogs.maxLinesPerBatch)])
                    guard await ship(chunk, pod: name, workload: workload, logs: logs) else { break }
                }
            }
        }
        // Pods that are gone no longer need a cursor.
        if complete { logCursors = logCursors.filter { seen.contains($0.key) } }
    }

    /// One batch of a pod's lines; on acknowledgement the pod's cursor moves past them. False when
    /// it was not sent (tried again at the next pass).
    private func ship(_ lines: [(timestamp: String, text: String)], pod name: String, workload: Workload, logs: RPCClient) async -> Bool {
        var batch = Slipway_Logs_V1_AppendRequest()
        batch.batchId = 1
        batch.lines = lines.map { line in
            ApplicationLogs.logLine(environmentID: workload.environmentID, serviceID: workload.serviceID, instanceID: name,
                                    source: .stdout, level: .info, text: line.text)
        }
        let request = batch
        do {
            try await logs.bidirectional(Slipway_Logs_V1_Logs.Append.self, requests: { writer in try await writer.write(request) },
                                         responses: { responses in for try await _ in responses {} })
            logCursors[name] = Self.normalized(lines.last!.timestamp)
            try? AtomicFile.write(try JSONEncoder().encode(logCursors), to: directory + "/kubernetes-log-cursors.json")
            return true
        } catch {
            logger.warning("cannot ship pod logs", metadata: ["pod": "\(name)", "error": "\(error)"])
            return false
        }
    }

    /// An RFC 3339 timestamp with its fraction padded to 9 digits, so timestamps compare as text
    /// (the API server drops trailing zeros: `…13.32Z`).
    static func normalized(_ timestamp: String) -> String {
        guard timestamp.hasSuffix("Z") else { return timestamp }
        guard let dot = timestamp.firstIndex(of: ".") else { return String(timestamp.dropLast()) + ".000000000Z" }
        let fraction = timestamp[timestamp.index(after: dot)..<timestamp.index(before: timestamp.endIndex)]
        return String(timestamp[..<dot]) + "." + fraction.padding(toLength: 9, withPad: "0", startingAt: 0) + "Z"
    }

    // MARK: Helpers

    private func podObjects(_ workload: Workload) async throws -> [[String: Any]] {
        let input = Self.input(workload)
        let selector = KubernetesManifests.selector(input).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        return try await driver.client.list(apiVersion: "v1", kind: "Pod", namespace: KubernetesManifests.namespace(for: workload.environmentID), labelSelector: selector)
    }

    /// A pod as an instance: its name, `podIP:8080`, image, restarts and last exit.
    static func instance(_ pod: [String: Any], _ status: KubernetesStatus.Pod) -> Instance {
        var instance = Instance(id: status.name, port: 8080, image: image(pod))
        instance.host = (pod["status"] as? [String: Any])?["podIP"] as? String
        instance.restarts = status.restarts
        instance.lastExit = status.lastExit
        instance.oomKilled = status.oomKilled
        return instance
    }

    static func image(_ pod: [String: Any]) -> String {
        ((((pod["spec"] as? [String: Any])?["containers"] as? [[String: Any]])?.first)?["image"] as? String) ?? ""
    }

    private func saveWorkloads() throws {
        try AtomicFile.write(try JSONEncoder().encode(workloads), to: directory + "/kubernetes-workloads.json")
    }
}
