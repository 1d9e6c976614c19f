import Foundation
import Logging
import SlipwayIsolation
import SlipwayProcess
import SlipwayRegistry
import SlipwayServiceKit
import SlipwayTestSupport
import Testing

@testable import SlipwayCluster

#if canImport(Glibc)
import Glibc
#endif

/// The local driver with isolation on, as the cluster service runs it: real bridges, network
/// namespaces, nftables rules, user namespaces and runc.
@Suite(.serialized) struct IsolatedClusterTests {
    struct Fixture {
        let scratch: String
        let image: String
        let cluster: LocalCluster
        let network: EnvironmentNetworks
    }

    /// Pools of their own (10.210.x.0/24 subnets): never one the platform of another suite uses.
    static func with(subnetLength: Int = 24, _ body: (Fixture) async throws -> Void) async throws {
        try await TestRegistry.withSeeded("slipway-isolated") { scratch, registry in
            ProcessTree.becomeSubreaper()
            let image = try await LocalRuntimeTests.pushHello(registry, scratch: scratch)
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            var configuration = EnvironmentNetworks.Configuration()
            configuration.pool = IPv4Network("10.210.0.0/16")!
            configuration.subnetLength = subnetLength
            let network = try EnvironmentNetworks(directory: scratch + "/cluster/network", configuration: configuration, logger: logger)
            try await network.prepare()
            let cluster = try LocalCluster(directory: scratch + "/cluster", network: network, logger: logger)
            var failure: (any Error)?
            do {
                try await body(Fixture(scratch: scratch, image: image, cluster: cluster, network: network))
            } catch {
                failure = error
            }
            for instance in (try? await cluster.runtime.list()) ?? [] { try? await cluster.runtime.remove(instance.id) }
            await network.removeAll()
            if let failure { throw failure }
        }
    }

    static func spec(_ fixture: Fixture, _ workload: Workload, replicas: Int = 1) -> DeploySpec {
        var spec = DeploySpec(workload: workload, image: fixture.image)
        spec.replicas = replicas
        spec.readiness = .http(path: "/health")
        spec.checkPeriod = .milliseconds(20)
        spec.readyTimeout = .seconds(20)
        spec.stopGrace = .milliseconds(200)
        return spec
    }

    static let web = Workload(environmentID: "env_a", serviceID: "svc_web", serviceName: "web")
    static let api = Workload(environmentID: "env_a", serviceID: "svc_api", serviceName: "api")
    static let other = Workload(environmentID: "env_b", serviceID: "svc_other", serviceName: "other")

    /// Runs a shell command inside the instance; its exit status and output.
    /// (A command still running after 20 s is killed and counts as failed.)
    static func inside(_ fixture: Fixture, _ id: String, _ script: String) async throws -> (Bool, String) {
        let arguments = ["--root", fixture.cluster.runtime.directory + "/runc", "exec", id, "/bin/sh", "-c", script]
        let (termination, lines) = try await withTimeout(.seconds(20)) { try await ChildProcess("/usr/sbin/runc", arguments).output() }
        return (termination.succeeded, lines.joined(separator: "\n"))
    }

    /// GET /health of a service by its name in the instance's /etc/hosts (busybox's own resolver
    /// needs glibc's NSS libraries, which the image does not have; nc takes the address).
    static func byName(_ name: String) -> String {
        "printf 'GET /health HTTP/1.0\\r\\n\\r\\n' | nc -w 2 $(awk '$2 == \"\(name)\" { print $1; exit }' /etc/hosts) 8080 | grep -q '^HTTP/1.[01] 200'"
    }

    static func get(_ address: String, _ path: String) async throws -> String? {
        let (termination, lines) = try await ChildProcess("/usr/bin/curl", ["-sf", "-m", "2", "http://\(address)\(path)"]).output()
        return termination.succeeded ? lines.joined(separator: "\n") : nil
    }

    /// A socket listening on every host address (connections complete in its backlog).
    static func listener() throws -> (fd: Int32, port: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = INADDR_ANY
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard ok, listen(fd, 64) == 0 else { throw TestFailure("cannot listen") }
        return (fd, Int(UInt16(bigEndian: address.sin_port)))
    }

    @Test func instancesGetTheirOwnAddressesReachTheirEnvironmentByNameAndNothingElse() async throws {
        try await Self.with { fixture in
            let web = try await fixture.cluster.deploy(Self.spec(fixture, Self.web, replicas: 2))
            let api = try await fixture.cluster.deploy(Self.spec(fixture, Self.api))
            let other = try await fixture.cluster.deploy(Self.spec(fixture, Self.other))
            // Addresses of each environment's subnet, port 8080 for every instance.
            let a = try #require(IPv4Network("10.210.0.0/24")), b = try #require(IPv4Network("10.210.1.0/24"))
            for instance in web + api {
                let address = try #require(IPv4Network.parse(instance.host ?? ""))
                #expect(instance.port == 8080 && a.contains(address))
            }
            #expect(b.contains(try #require(IPv4Network.parse(other[0].host ?? ""))))
            // The host (the load balancer, the probes) reaches them.
            for instance in web + api + other { #expect(try await Self.get(instance.address, "/health") != nil) }

            // By name within the environment (busybox has no resolver: its /etc/hosts is read as a
            // resolver reads it); the name is a built-in variable.
            let id = web[0].id
            let (byName, page) = try await Self.inside(fixture, id, Self.byName("api") + " && echo \" $SLIPWAY_INTERNAL_HOST\"")
            #expect(byName && page.hasSuffix(" web"), "\(page)")
            let hosts = try String(contentsOfFile: fixture.cluster.runtime.instanceDirectory(id) + "/etc/hosts", encoding: .utf8)
            #expect(hosts.contains("\(api[0].host!)\tapi") && hosts.contains("\(web[1].host!)\tweb") && !hosts.contains("other"))

            // Not another environment's instance, not the host on any of its addresses.
            let (crossed, _) = try await Self.inside(fixture, id, "printf 'GET /health HTTP/1.0\\r\\n\\r\\n' | nc -w 2 \(other[0].host!) 8080 | grep -q 200")
            #expect(!crossed)
            let (fd, port) = try Self.listener()
            defer { close(fd) }
            let hostAddresses = ["10.210.0.1", "10.210.1.1"] + (try await Self.hostAddresses())
            for address in hostAddresses {
                let (reached, output) = try await Self.inside(fixture, id, "nc -w 2 \(address) \(port) -e /bin/true")
                #expect(!reached, "\(address):\(port) reached from an instance: \(output)")
                // The host itself reaches it: the rules are what stops the instance.
            }
            // Without this cluster's table the same connection goes through: the rules are what stop it.
            _ = try await ChildProcess("/usr/sbin/nft", ["delete", "table", "inet", fixture.network.table]).output()
            let (unfiltered, unfilteredOutput) = try await Self.inside(fixture, id, "nc -w 2 10.210.0.1 \(port) -e /bin/true")
            #expect(unfiltered, "\(unfilteredOutput)")
            try await fixture.network.reloadRules()
            let (refiltered, _) = try await Self.inside(fixture, id, "nc -w 2 10.210.0.1 \(port) -e /bin/true")
            #expect(!refiltered)

            // Root inside is an unprivileged range outside; no raw sockets; /proc/sys read-only;
            // only its own processes; the pids limit holds.
            let (_, map) = try await Self.inside(fixture, id, "cat /proc/self/uid_map")
            let fields = map.split(whereSeparator: { $0 == " " || $0 == "\n" })
            #expect(fields.count == 3 && fields[0] == "0" && Int(fields[1]) == Int(fixture.network.hostID(0)) && fields[2] == "65536", "\(map)")
            let (pinged, pingOutput) = try await Self.inside(fixture, id, "ping -c 1 -W 1 10.210.0.1")
            #expect(!pinged && pingOutput.contains("permission denied"), "\(pingOutput)")
            let (wroteSys, _) = try await Self.inside(fixture, id, "echo 1 > /proc/sys/net/ipv4/ip_forward")
            #expect(!wroteSys)
            let (_, processes) = try await Self.inside(fixture, id, "ls -d /proc/[0-9]* | wc -l")
            #expect((Int(processes.trimmingCharacters(in: .whitespaces)) ?? 99) < 10, "\(processes)")
            let (unshared, _) = try await Self.inside(fixture, id, "unshare -n true")
            #expect(!unshared)
            let config = try String(contentsOfFile: fixture.cluster.runtime.instanceDirectory(id) + "/bundle/config.json", encoding: .utf8)
            #expect(config.contains("\"pids\":{\"limit\":1024}") && config.contains("SCMP_ACT_ERRNO") && !config.contains("CAP_NET_RAW"))

            // A new version of api: web's /etc/hosts follows, the old address is gone from it.
            let api2 = try await fixture.cluster.deploy(Self.spec(fixture, Self.api))
            let updated = try String(contentsOfFile: fixture.cluster.runtime.instanceDirectory(id) + "/etc/hosts", encoding: .utf8)
            #expect(updated.contains("\(api2[0].host!)\tapi") && (api2[0].host == api[0].host || !updated.contains("\(api[0].host!)\t")))
            let (again, _) = try await Self.inside(fixture, id, Self.byName("api"))
            #expect(again)

            // Removed instances give their namespace and address back.
            _ = try await fixture.cluster.delete(Self.other, grace: .zero)
            #expect(!FileManager.default.fileExists(atPath: "/var/run/netns/" + fixture.network.namespace(other[0].id)))
            #expect(await fixture.network.attachment(other[0].id) == nil)
        }
    }

    static func hostAddresses() async throws -> [String] {
        let (_, lines) = try await ChildProcess("/usr/sbin/ip", ["-4", "-o", "addr", "show"]).output()
        return lines.compactMap { line in
            let fields = line.split(separator: " ")
            guard let index = fields.firstIndex(of: "inet"), index + 1 < fields.count else { return nil }
            return fields[index + 1].split(separator: "/").first.map(String.init)
        }
    }

    @Test func aFullSubnetACollidingBridgeAndMissingFeaturesAreClearErrors() async throws {
        // /30: one instance address (.2) per environment.
        try await Self.with(subnetLength: 30) { fixture in
            _ = try await fixture.cluster.deploy(Self.spec(fixture, Self.web))
            let error = await #expect(throws: ClusterFailure.self) { try await fixture.cluster.deploy(Self.spec(fixture, Self.web, replicas: 1)) }
            #expect(error?.description.contains("subnet 10.210.0.0/30 is full") == true, "\(String(describing: error))")
            // The one that served still does, and nothing half-made is left.
            #expect(try await fixture.cluster.instances(Self.web).allSatisfy(\.running))
            #expect(try await fixture.cluster.runtime.list().count == 1)

            // A bridge of that name made by someone else.
            let taken = fixture.network.bridgeName("env_taken")
            _ = try await ChildProcess("/usr/sbin/ip", ["link", "add", taken, "type", "bridge"]).output()
            defer { Task { _ = try? await ChildProcess("/usr/sbin/ip", ["link", "delete", taken]).output() } }
            let collision = await #expect(throws: ClusterFailure.self) {
                try await fixture.cluster.deploy(Self.spec(fixture, Workload(environmentID: "env_taken", serviceID: "svc_t", serviceName: "t")))
            }
            #expect(collision?.description.contains("bridge \(taken) for environment env_taken exists already") == true, "\(String(describing: collision))")
        }

        var missing = EnvironmentNetworks.Configuration()
        missing.nft = "/nonexistent/nft"
        #expect(throws: EnvironmentNetworks.Failure("network isolation needs /nonexistent/nft, which is missing (apt-get install nftables); or run instances unisolated with --cluster-isolation off")) {
            _ = try EnvironmentNetworks(directory: NSTemporaryDirectory() + "/isolation-missing", configuration: missing, logger: Logger(label: "test"))
        }
        let sysctl = NSTemporaryDirectory() + "/max_user_namespaces-\(getpid())"
        try "0\n".write(toFile: sysctl, atomically: true, encoding: .utf8)
        var noUserNamespaces = EnvironmentNetworks.Configuration()
        noUserNamespaces.userNamespacesSysctl = sysctl
        let failure = #expect(throws: EnvironmentNetworks.Failure.self) {
            _ = try EnvironmentNetworks(directory: NSTemporaryDirectory() + "/isolation-missing", configuration: noUserNamespaces, logger: Logger(label: "test"))
        }
        #expect(failure?.description.contains("needs user namespaces") == true)
    }

    @Test func subnetsSkipTheHostsNetworksAndAddressesSurviveARestart() async throws {
        try await Self.with { fixture in
            // A network of the host's in the pool's first subnet: the environment gets the next one.
            let dummy = "swtestbr\(getpid() % 1000)"
            _ = try await ChildProcess("/usr/sbin/ip", ["link", "add", dummy, "type", "bridge"]).output()
            defer { Task { _ = try? await ChildProcess("/usr/sbin/ip", ["link", "delete", dummy]).output() } }
            _ = try await ChildProcess("/usr/sbin/ip", ["addr", "add", "10.210.0.77/24", "dev", dummy]).output()
            let first = try await fixture.cluster.deploy(Self.spec(fixture, Self.web))
            #expect(first[0].host?.hasPrefix("10.210.1.") == true, "\(first)")

            // An address handed out whose instance never made it onto a record (a crash between the
            // two) is freed at the next start; the instance on record keeps its own.
            _ = try await fixture.network.attach("web-orphan", environmentID: "env_a")
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            var configuration = fixture.network.configuration
            configuration.pool = IPv4Network("10.210.0.0/16")!
            let network = try EnvironmentNetworks(directory: fixture.scratch + "/cluster/network", configuration: configuration, logger: logger)
            let restarted = try LocalCluster(directory: fixture.scratch + "/cluster", network: network, logger: logger)
            #expect(try await restarted.recover())
            #expect(await network.attachment("web-orphan") == nil)
            #expect(!FileManager.default.fileExists(atPath: "/var/run/netns/" + network.namespace("web-orphan")))
            #expect(await network.attachment(first[0].id)?.address == first[0].host)
            #expect(try await Self.get(first[0].address, "/health") != nil)
        }
    }
}
