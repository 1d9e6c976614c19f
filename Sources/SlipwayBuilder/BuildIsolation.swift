import Foundation
import SlipwayIsolation
import SlipwayProtos
import SlipwayRPC

/// How a Dockerfile's `RUN` steps run: under runc (through ``RuntimeShim``, which hardens each
/// step's config as instances are), in a user namespace whose root is an unprivileged range of the
/// host, and in a network namespace of the build's own: on the builds' bridge with egress through
/// NAT only (`nat`), or with no network at all (`none`). Base images are pulled and the result is
/// pushed by buildah itself, outside the steps.
public struct BuildIsolation: Sendable {
    public enum Network: String, Sendable, CaseIterable {
        case nat, none
    }

    /// The first host uid and gid of the builds' user namespace.
    public static let hostIDBase: UInt32 = 900_000_000
    /// The builds' "environment" on their bridge.
    static let environment = "builds"

    public var network: Network
    /// For `nat`: the builds' bridge, addresses and rules.
    public var networks: EnvironmentNetworks?
    /// The builder executable: each build's runtime shim runs it (``RuntimeShim``).
    public var executable: String

    public init(network: Network, networks: EnvironmentNetworks?, executable: String) {
        self.network = network
        self.networks = networks
        self.executable = executable
    }

    /// The builds' one range (their layers are shared, so their owners must be the same).
    var hostID: UInt32 { networks?.hostID(0) ?? Self.hostIDBase }

    /// The network a build gets: what it asked for, or this builder's default. A build cannot have
    /// NAT from a builder started with `none` (it has no bridge).
    func network(for asked: Network?) throws(RPCError) -> Network {
        guard let asked else { return network }
        if asked == .nat, networks == nil {
            throw RPCError(.failedPrecondition, "network nat: this builder runs RUN steps without any network (--builder-isolation none); ask for none or leave it unset")
        }
        return asked
    }

    /// Attaches the build (`nat`), installs its runtime shim in `directory` (the build's work
    /// directory: its steps' containers are found there) and returns buildah's isolation arguments
    /// and the id to detach.
    func prepare(job: String, directory: String, network: Network) async throws(BuildFailure) -> (arguments: [String], attached: String?) {
        let shim: String
        do {
            shim = try RuntimeShim.install(directory: directory, executable: executable)
        } catch {
            throw BuildFailure(.buildError, step: .build, "cannot install the build's runtime: \(error)")
        }
        let map = "0:\(hostID):\(EnvironmentNetworks.idRange)"
        let asked = network
        var network = "none"
        var attached: String?
        if asked == .nat, let networks {
            let id = "b" + String(job.lowercased().filter { $0.isHexDigit }.prefix(12))
            do {
                _ = try await networks.attach(id, environmentID: Self.environment)
                try await networks.wire(id, pid: nil)
            } catch {
                await networks.detach(id)
                throw BuildFailure(.buildError, step: .build, "cannot give the build a network of its own: \(error.description)")
            }
            attached = id
            network = "ns:/var/run/netns/" + networks.namespace(id)
        }
        return (["--isolation", "oci", "--runtime", shim, "--network", network, "--userns-uid-map", map, "--userns-gid-map", map], attached)
    }
}
