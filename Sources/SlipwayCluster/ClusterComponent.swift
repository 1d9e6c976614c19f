import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import SlipwayIsolation
import SlipwayProcess
import SlipwayRPC
import SlipwayServiceKit

/// The cluster service's own flags.
public struct ClusterOptions: ParsableArguments, Sendable {
    @Option(help: "Where public workloads' traffic is switched: network (the network service, default) or none.")
    var clusterTraffic: String?
    @Option(help: "local (OCI containers under runc on this machine, default) or kubernetes (a Kubernetes API server).")
    var clusterDriver: String?
    @Option(help: "kubeconfig of the Kubernetes driver (default: $KUBECONFIG, else ~/.kube/config; in a pod: its service account).")
    var clusterKubeconfig: String?
    @Option(help: "Context of the kubeconfig (default: its current-context).") var clusterKubeContext: String?
    @Option(help: "Kubernetes: the platform's namespace, which the environments' pods may not connect to (default slipway).")
    var clusterKubePlatformNamespace: String?
    @Option(help: "Kubernetes: the ingress controller's namespace, the only other one the environments' pods accept connections from (default ingress-nginx).")
    var clusterKubeIngressNamespace: String?
    @Option(help: "Kubernetes: the cluster's pod or service network, a.b.c.d/n, kept out of the pods' egress to \"anywhere\" (repeatable; set both where the network plugin matches pod addresses against ipBlock, as Calico and Cilium do).")
    var clusterKubeInternalCidr: [String] = []
    @Option(help: "Registry credentials for pulling the apps' images, a containers-auth.json (env SLIPWAY_CLUSTER_REGISTRY_AUTH_FILE; slipway up writes one for its registry).")
    var clusterRegistryAuthFile: String?
    @Flag(help: "A missing --cluster-registry-auth-file means anonymous pulls, with a warning (an optional Kubernetes Secret), instead of an error.")
    var clusterRegistryAuthOptional = false
    @Option(help: "Local driver: on (default) runs each instance in its own network and user namespaces behind nftables rules; off runs them on the host's network as the host's root (only for code you trust).")
    var clusterIsolation: String?
    @Option(help: "Local driver: the IPv4 pool the environments' subnets come from (default 10.89.0.0/16).")
    var clusterNetworkPool: String?
    @Option(help: "Local driver: prefix length of each environment's subnet (default 24: 253 instances per environment).")
    var clusterSubnetLength: Int?
    @Option(help: "Local driver: MiB of each instance's stdout or stderr kept while not yet acknowledged by the logs service (default 64); beyond, the oldest unshipped output is dropped and the log stream says so.")
    var clusterOutputBacklogMib: Int?

    public init() {}
}

/// `slipway-cluster`: runs releases: OCI containers under runc on this machine (local driver), or
/// Deployments on a Kubernetes cluster (Kubernetes driver).
public struct ClusterComponent: PlatformComponent {
    let options: ClusterOptions

    public init(options: ClusterOptions = ClusterOptions()) {
        self.options = options
    }

    public func setUp(configuration: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service] {
        switch options.clusterDriver ?? "local" {
        case "local": break
        case "kubernetes": return try await setUpKubernetes(configuration: configuration, logger: logger, router: &router)
        case let other: throw ValidationError("--cluster-driver must be local or kubernetes, got \"\(other)\"")
        }
        var traffic: (any TrafficSwitch)?
        switch options.clusterTraffic ?? "network" {
        case "network":
            traffic = NetworkTrafficSwitch(client: configuration.client(for: .network))
        case "none":
            traffic = nil
        case let other:
            throw ValidationError("--cluster-traffic must be network or none, got \"\(other)\"")
        }
        // The containers' init processes become ours once runc has started them and exited: their
        // exit status is read (and they are reaped) by the supervisor.
        if !ProcessTree.becomeSubreaper() { logger.warning("cannot become a child subreaper: exit statuses of instances will be unknown") }
        let logs = configuration.directory[.logs]
        let directory = try configuration.stateDirectory()
        var backlog = ApplicationLogs.defaultMaxBacklogBytes
        if let mib = options.clusterOutputBacklogMib {
            guard (1...4096).contains(mib) else { throw ValidationError("--cluster-output-backlog-mib must be 1 to 4096, got \(mib)") }
            backlog = UInt64(mib) * 1024 * 1024
        }
        let network = try await isolation(directory: directory, logger: logger)
        let cluster = try LocalCluster(
            directory: directory, traffic: traffic, logs: configuration.client(for: .logs),
            registryAuthFile: try registryAuthFile(), network: network, outputBacklogBytes: backlog, logger: logger)
        try await cluster.recover()
        router.register(ClusterService(cluster: cluster))
        var isolationSummary = "off (host network)"
        if let network { isolationSummary = "on, pool \(network.configuration.pool), nftables table inet \(network.table)" }
        logger.info("cluster ready", metadata: [
            "driver": "local (runc)", "logs": "\(logs)",
            "isolation": "\(isolationSummary)", "traffic": "\(traffic == nil ? "none" : "network at \(configuration.directory[.network])")",
        ])
        var services: [any Service] = [Supervisor(cluster: cluster)]
        if let applicationLogs = cluster.applicationLogs { services.append(LogShipping(logs: applicationLogs)) }
        return services
    }
}

extension ClusterComponent {
    /// The instances' isolation, checked and its rules loaded: the service does not start with
    /// isolation asked for and missing (no instance runs half-isolated).
    func isolation(directory: String, logger: Logger) async throws -> EnvironmentNetworks? {
        switch options.clusterIsolation ?? "on" {
        case "off":
            logger.warning("instance isolation is off: apps run on the host's network as root and reach every local service")
            return nil
        case "on": break
        case let other: throw ValidationError("--cluster-isolation must be on or off, got \"\(other)\"")
        }
        var settings = EnvironmentNetworks.Configuration()
        if let pool = options.clusterNetworkPool {
            guard let parsed = IPv4Network(pool: pool) else {
                throw ValidationError("--cluster-network-pool must be \(IPv4Network.poolRule), got \"\(pool)\"")
            }
            settings.pool = parsed
        }
        if let length = options.clusterSubnetLength { settings.subnetLength = length }
        let network: EnvironmentNetworks
        do {
            network = try await EnvironmentNetworks.prepared(directory: directory + "/network", configuration: settings, logger: logger)
        } catch {
            throw ValidationError("cannot isolate instances: \(error.description)")
        }
        return network
    }

    /// The pull credentials file, checked readable at start.
    func registryAuthFile(logger: Logger? = nil) throws -> String? {
        guard let path = options.clusterRegistryAuthFile ?? ProcessInfo.processInfo.environment["SLIPWAY_CLUSTER_REGISTRY_AUTH_FILE"] else { return nil }
        guard FileManager.default.isReadableFile(atPath: path) else {
            if options.clusterRegistryAuthOptional, !FileManager.default.fileExists(atPath: path) {
                logger?.warning("no registry credentials: the apps' images are pulled anonymously", metadata: ["expected": "\(path)"])
                return nil
            }
            throw ValidationError("--cluster-registry-auth-file: cannot read \(path)")
        }
        return path
    }

    func setUpKubernetes(configuration: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service] {
        let environment = ProcessInfo.processInfo.environment
        let kubernetes: KubernetesClient.Configuration
        if options.clusterKubeconfig == nil, environment["KUBERNETES_SERVICE_HOST"] != nil {
            kubernetes = try KubernetesClient.Configuration.inCluster()
        } else {
            let path = options.clusterKubeconfig ?? environment["KUBECONFIG"] ?? ((environment["HOME"] ?? "/root") + "/.kube/config")
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ValidationError("--cluster-driver kubernetes: cannot read the kubeconfig \(path) (pass --cluster-kubeconfig)")
            }
            kubernetes = try KubernetesClient.Configuration.kubeconfig(String(decoding: data, as: UTF8.self), context: options.clusterKubeContext)
        }
        let logs = configuration.directory[.logs]
        var boundaries = KubernetesCluster.Boundaries()
        if let name = options.clusterKubePlatformNamespace { boundaries.platformNamespace = name }
        if let name = options.clusterKubeIngressNamespace { boundaries.ingressNamespace = name }
        for cidr in options.clusterKubeInternalCidr {
            guard let network = IPv4Network(cidr) else { throw ValidationError("--cluster-kube-internal-cidr must be an IPv4 network a.b.c.d/n, got \"\(cidr)\"") }
            boundaries.internalNetworks.append(network.description)
        }
        let cluster = try KubernetesCluster(
            driver: KubernetesDriver(client: try KubernetesClient(kubernetes), logger: logger), directory: try configuration.stateDirectory(),
            logs: configuration.client(for: .logs), pullCredentials: try registryAuthFile(logger: logger).flatMap { FileManager.default.contents(atPath: $0) },
            boundaries: boundaries, logger: logger)
        router.register(ClusterService(cluster: cluster))
        logger.info("cluster ready", metadata: ["driver": "kubernetes", "server": "\(kubernetes.server.absoluteString)", "logs": "\(logs)"])
        return [KubernetesWatcher(cluster: cluster)]
    }
}

/// Follows the pods' status and logs, for the life of the service.
struct KubernetesWatcher: Service {
    let cluster: KubernetesCluster

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await cluster.run()
        }
    }
}

/// Restarts instances that exit, for the life of the service.
struct Supervisor: Service {
    let cluster: LocalCluster

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await cluster.supervise()
        }
    }
}

/// Ships the instances' output to the logs service, for the life of the service.
struct LogShipping: Service {
    let logs: ApplicationLogs

    func run() async throws {
        await cancelWhenGracefulShutdown {
            await logs.run()
        }
    }
}
