import Crypto
import Foundation
import Logging
import SlipwayProcess
import SlipwayServiceKit

#if canImport(Glibc)
import Glibc
#endif

/// The local driver's network isolation: one Linux bridge per environment, one network namespace
/// per instance with a veth into its environment's bridge and an address from the environment's
/// subnet, and one nftables table that keeps instances away from the host and from other
/// environments.
///
/// - Subnets: each environment gets the lowest free `/subnetLength` of the pool that no route or
///   address of the host overlaps; `.1` is the bridge (the instances' gateway), `.2` onwards are
///   instances. Allocations are written to `<directory>/network.json` before anything is created,
///   so a restarted cluster service reuses them (no address handed out twice) and
///   ``reconcile(keeping:)`` frees the ones of instances that never made it onto a record.
/// - Names: bridges `sw<cluster><environment>` and host-side veths `sv<cluster><instance>` (hashes,
///   12 characters, within IFNAMSIZ), namespaces `slipway-<cluster>-<instance id>`, table
///   `inet slipway_<cluster>`; `<cluster>` is a hash of the state directory, so two clusters on one
///   host never share a name.
/// - Rules (``ruleset``): from an instance bridge, the host itself accepts nothing but replies
///   (`input` drops), another bridge is unreachable and nothing outside opens a connection to an
///   instance (`forward` drops), link-local addresses (cloud metadata) are dropped, and the rest
///   leaves through NAT (`masquerade`). Within one bridge (one environment) instances reach each other.
/// - User namespaces: environment `n` maps its root to host ids `hostIDBase + n × 65536` onwards.
public actor EnvironmentNetworks {
    public struct Configuration: Sendable {
        /// Where the environments' subnets come from.
        public var pool = IPv4Network("10.89.0.0/16")!
        /// Prefix length of each environment's subnet (24: 253 instances).
        public var subnetLength = 24
        /// The first host uid and gid of the environments' user namespaces.
        public var hostIDBase: UInt32 = 1_000_000
        public var ip = "/usr/sbin/ip"
        public var nft = "/usr/sbin/nft"
        /// Read for "are user namespaces available".
        public var userNamespacesSysctl = "/proc/sys/user/max_user_namespaces"
        public var ipForwardSysctl = "/proc/sys/net/ipv4/ip_forward"
        /// The host's resolvers, lent to instances unless they are on loopback (unreachable from an instance).
        public var resolvConf = "/etc/resolv.conf"
        /// How the operator does without isolation, for the errors that say it is unavailable.
        public var withoutIsolation = "run instances unisolated with --cluster-isolation off"

        public init() {}
    }

    public struct Failure: Error, CustomStringConvertible, Equatable {
        public var description: String
        public init(_ description: String) { self.description = description }
    }

    /// What an instance gets.
    public struct Attachment: Sendable, Equatable {
        public var namespace: String
        public var address: String
        public var gateway: String
        public var subnet: IPv4Network
        /// Host uid and gid of the instance's root (the environment's range of ``idRange``).
        public var hostID: UInt32
        public var namespacePath: String { "/var/run/netns/" + namespace }
    }

    /// Ids each environment's user namespace maps.
    public static let idRange: UInt32 = 65536

    struct Environment: Codable, Equatable {
        var index: Int
        var bridge: String
        /// Instance id → host number in the subnet.
        var addresses: [String: UInt32] = [:]
    }

    struct State: Codable, Equatable {
        var environments: [String: Environment] = [:]
    }

    public nonisolated let configuration: Configuration
    nonisolated let statePath: String
    /// Four hex digits of the state directory's hash: in every name this cluster creates.
    public nonisolated let tag: String
    let logger: Logger
    var state: State
    /// Bridges checked or created by this process.
    var bridgesUp: Set<String> = []
    var rulesFor: Set<String>? = nil
    let turns = Turns()

    public nonisolated var table: String { "slipway_" + tag }
    nonisolated var bridgePrefix: String { "sw" + tag }

    /// Checks that the kernel and tools can isolate (nothing is changed yet).
    public init(directory: String, configuration: Configuration = Configuration(), logger: Logger) throws(Failure) {
        self.configuration = configuration
        self.logger = logger
        guard (configuration.pool.prefixLength...30).contains(configuration.subnetLength) else {
            throw Failure("the environments' subnets (/\(configuration.subnetLength)) must be /\(configuration.pool.prefixLength) to /30 within the pool \(configuration.pool)")
        }
        try Self.checkKernel(configuration)
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw Failure("cannot create \(directory): \(error)")
        }
        statePath = directory + "/network.json"
        // The directory's real path: the same cluster gets the same names however it is named.
        let real = URL(fileURLWithPath: directory).resolvingSymlinksInPath().standardizedFileURL.path
        tag = String(SHA256.hash(data: Data(real.utf8)).hex.prefix(4))
        if let data = FileManager.default.contents(atPath: statePath) {
            do {
                state = try JSONDecoder().decode(State.self, from: data)
            } catch {
                throw Failure("\(statePath) is not a network state: \(error)")
            }
        } else {
            state = State()
        }
    }

    /// What isolation needs from the machine, each missing piece named.
    static func checkKernel(_ configuration: Configuration) throws(Failure) {
        for (tool, package) in [(configuration.ip, "iproute2"), (configuration.nft, "nftables")] where !FileManager.default.isExecutableFile(atPath: tool) {
            throw Failure("network isolation needs \(tool), which is missing (apt-get install \(package)); or \(configuration.withoutIsolation)")
        }
        do {
            try InstanceHardening.checkUserNamespaces(sysctl: configuration.userNamespacesSysctl, alternative: configuration.withoutIsolation)
        } catch {
            throw Failure("network \(error.description)")
        }
        guard FileManager.default.isWritableFile(atPath: configuration.ipForwardSysctl) else {
            throw Failure("network isolation needs to turn on IPv4 forwarding for the instances' NAT, and \(configuration.ipForwardSysctl) is not writable (run as root)")
        }
    }

    // MARK: Set-up

    /// Checked (``init(directory:configuration:logger:)``) and prepared (``prepare()``): ready to attach.
    public static func prepared(directory: String, configuration: Configuration, logger: Logger) async throws(Failure) -> EnvironmentNetworks {
        let networks = try EnvironmentNetworks(directory: directory, configuration: configuration, logger: logger)
        try await networks.prepare()
        return networks
    }

    /// Loads the rules (the kernel must accept them: nftables in the kernel, NAT included) and turns
    /// on forwarding; the bridges of environments on record come up when an instance needs them.
    public func prepare() async throws(Failure) {
        try await applyRules()
        guard let fd = Optional(open(configuration.ipForwardSysctl, O_WRONLY | O_CLOEXEC)), fd >= 0 else {
            throw Failure("cannot open \(configuration.ipForwardSysctl): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        guard write(fd, "1", 1) == 1 else { throw Failure("cannot turn on IPv4 forwarding: \(String(cString: strerror(errno)))") }
    }

    /// The table, whole: replaced atomically (one `nft -f` transaction).
    nonisolated func ruleset(bridges: [String]) -> String {
        let any = "\"\(bridgePrefix)*\""
        var same = ""
        for bridge in bridges.sorted() { same += "        iifname \"\(bridge)\" oifname \"\(bridge)\" accept\n" }
        return """
        table inet \(table)
        delete table inet \(table)
        table inet \(table) {
            chain input {
                type filter hook input priority filter - 10; policy accept;
                iifname \(any) ct state established,related accept
                iifname \(any) counter drop comment "an instance never reaches the host itself"
            }
            chain forward {
                type filter hook forward priority filter - 10; policy accept;
        \(same)        oifname \(any) ct state established,related accept
                oifname \(any) counter drop comment "nothing but the host opens a connection to an instance"
                iifname \(any) ip daddr 169.254.0.0/16 counter drop comment "no link-local services (cloud metadata)"
                iifname \(any) accept
            }
            chain postrouting {
                type nat hook postrouting priority srcnat; policy accept;
                iifname \(any) oifname != \(any) masquerade
            }
        }

        """
    }

    /// Loads the rules again even if this process loaded them (someone removed the table).
    public func reloadRules() async throws(Failure) {
        rulesFor = nil
        try await applyRules()
    }

    func applyRules() async throws(Failure) {
        let bridges = Set(state.environments.values.map(\.bridge))
        guard rulesFor != bridges else { return }
        let path = (statePath as NSString).deletingLastPathComponent + "/nftables.conf"
        do {
            try AtomicFile.write(Data(ruleset(bridges: Array(bridges)).utf8), to: path, mode: 0o644)
        } catch {
            throw Failure(error.description)
        }
        try await run(configuration.nft, ["-f", path], "loading the isolation rules (nftables)")
        rulesFor = bridges
    }

    // MARK: Instances

    /// Gives the instance an address in its environment's subnet (on record before anything is
    /// made), with its environment's bridge up; ``wire(_:pid:)`` connects its network namespace.
    public func attach(_ instanceID: String, environmentID: String) async throws(Failure) -> Attachment {
        let (_, subnet) = try await ensureEnvironment(environmentID)
        if let existing = attachment(instanceID) { return existing }
        var record = state.environments[environmentID]!
        let last = UInt32(subnet.size - 2)
        guard last >= 2, let number = (2...last).first(where: { candidate in !record.addresses.values.contains(candidate) }) else {
            throw Failure("environment \(environmentID)'s subnet \(subnet) is full: \(record.addresses.count) instances, the most it holds (a shorter --cluster-subnet-length gives each environment more addresses)")
        }
        record.addresses[instanceID] = number
        state.environments[environmentID] = record
        try save()
        return attachment(instanceID)!
    }

    /// Connects the instance's network namespace to its environment's bridge: the namespace of
    /// process `pid` (a container runc has created, not started: its namespace belongs to its user
    /// namespace), or a new one (`pid` nil: for a process started later with `--network ns:`).
    /// It gets the name `slipway-<id>` (`ip -n`), a veth into the bridge, its address and a default
    /// route through the bridge. A namespace of an earlier run of the instance goes first.
    public func wire(_ instanceID: String, pid: Int32?) async throws(Failure) {
        guard let attachment = attachment(instanceID),
              let environment = state.environments.values.first(where: { $0.addresses[instanceID] != nil }) else {
            throw Failure("instance \(instanceID) has no address")
        }
        try await bridgeUp(environment, attachment.subnet)
        let namespace = attachment.namespace, veth = veth(instanceID)
        await unwire(instanceID)
        // One shell for the five steps (each a process of its own would cost more than the rest of
        // an instance's start): name the namespace, make the veth pair (the MAC follows from the
        // address, as CNI's bridge plugin does, so an address given again is still right in the
        // host's ARP cache), plug it into the bridge, address the inside.
        let ip = configuration.ip
        let name = pid.map { "netns attach \(namespace) \($0)" } ?? "netns add \(namespace)"
        let script = """
            set -e
            '\(ip)' \(name)
            '\(ip)' link add \(veth) type veth peer name eth0 address \(Self.mac(attachment.address)) netns \(namespace)
            '\(ip)' link set \(veth) master \(environment.bridge) up
            '\(ip)' -n \(namespace) -batch - <<'END'
            link set lo up
            addr add \(attachment.address)/\(attachment.subnet.prefixLength) dev eth0
            link set eth0 up
            route add default via \(attachment.gateway)
            END
            """
        do {
            try await run("/bin/sh", ["-c", script], "connecting the network of \(instanceID) (\(namespace), \(veth) on \(environment.bridge))")
        } catch {
            await unwire(instanceID)
            throw error
        }
    }

    /// `0a:58:` and the four bytes of the address: locally administered, unicast.
    nonisolated static func mac(_ address: String) -> String {
        "0a:58:" + address.split(separator: ".").map { String(format: "%02x", Int($0) ?? 0) }.joined(separator: ":")
    }

    /// Removes the instance's namespace name and veth (its address stays its own).
    func unwire(_ instanceID: String) async {
        let namespace = namespace(instanceID)
        if FileManager.default.fileExists(atPath: "/var/run/netns/" + namespace) {
            let (termination, lines) = (try? await ChildProcess(configuration.ip, ["netns", "delete", namespace]).output()) ?? (.init(exitCode: nil, signal: nil), [])
            if !termination.succeeded { logger.warning("cannot delete a network namespace", metadata: ["namespace": "\(namespace)", "error": "\(lines.suffix(2))"]) }
        }
        // Deleting one end deletes both, and the namespace going usually took the pair with it.
        if FileManager.default.fileExists(atPath: "/sys/class/net/" + veth(instanceID)) {
            _ = try? await ChildProcess(configuration.ip, ["link", "delete", veth(instanceID)]).output()
        }
    }

    /// The instance's allocation, if it has one.
    public func attachment(_ instanceID: String) -> Attachment? {
        for (_, environment) in state.environments {
            guard let number = environment.addresses[instanceID], let subnet = subnet(environment.index) else { continue }
            return Attachment(
                namespace: namespace(instanceID), address: IPv4Network.format(subnet.host(number)),
                gateway: IPv4Network.format(subnet.host(1)), subnet: subnet, hostID: hostID(environment.index))
        }
        return nil
    }

    public nonisolated func hostID(_ index: Int) -> UInt32 { configuration.hostIDBase + UInt32(index) * Self.idRange }

    /// `slipway-<cluster>-<instance>`: whose it is shows in `ip netns list`.
    public nonisolated func namespace(_ instanceID: String) -> String { "slipway-\(tag)-\(instanceID)" }

    nonisolated func veth(_ instanceID: String) -> String {
        "sv" + tag + SHA256.hash(data: Data(instanceID.utf8)).hex.prefix(8)
    }

    nonisolated func subnet(_ index: Int) -> IPv4Network? {
        configuration.pool.subnet(index, length: configuration.subnetLength)
    }

    /// Removes the instance's namespace and veth and frees its address.
    public func detach(_ instanceID: String) async {
        await unwire(instanceID)
        for (id, var environment) in state.environments where environment.addresses[instanceID] != nil {
            environment.addresses[instanceID] = nil
            state.environments[id] = environment
            try? save()
        }
    }

    /// Frees every allocation whose instance is not in `keeping` (a crash between the allocation
    /// and the instance's record).
    public func reconcile(keeping: Set<String>) async {
        let known = state.environments.values.flatMap(\.addresses.keys)
        for id in known where !keeping.contains(id) {
            logger.info("freeing the address of an instance that is on no record", metadata: ["instance": "\(id)"])
            await detach(id)
        }
    }

    /// The environment's record and subnet; its bridge is up and the rules know it.
    func ensureEnvironment(_ environmentID: String) async throws(Failure) -> (Environment, IPv4Network) {
        await turns.acquire("environments")
        defer { turns.release("environments") }
        if let environment = state.environments[environmentID], let subnet = subnet(environment.index) {
            try await applyRules()
            try await bridgeUp(environment, subnet)
            return (environment, subnet)
        }
        let bridge = bridgeName(environmentID)
        let exists = try await linkExists(bridge)
        if exists || state.environments.values.contains(where: { $0.bridge == bridge }) {
            throw Failure("bridge \(bridge) for environment \(environmentID) exists already and is not this environment's (remove it with `ip link delete \(bridge)` if nothing uses it)")
        }
        let taken = try await hostNetworks()
        let used = Set(state.environments.values.map(\.index))
        let count = Int(min(UInt64(1) << UInt64(configuration.subnetLength - configuration.pool.prefixLength), 65536))
        var collisions: [(IPv4Network, String)] = []
        var chosen: Int?
        for index in 0..<count where !used.contains(index) {
            guard let candidate = subnet(index) else { break }
            if let clash = taken.first(where: { $0.0.overlaps(candidate) }) {
                collisions.append((candidate, clash.1))
                continue
            }
            chosen = index
            break
        }
        guard let index = chosen else {
            let example = collisions.first.map { "; \($0.0) collides with \($0.1)" } ?? ""
            throw Failure("no free /\(configuration.subnetLength) in the instance pool \(configuration.pool) for environment \(environmentID): \(used.count) used by environments, \(collisions.count) taken by the host's own networks\(example) (choose another --cluster-network-pool)")
        }
        let environment = Environment(index: index, bridge: bridge)
        state.environments[environmentID] = environment
        try save()
        try await applyRules()
        try await bridgeUp(environment, subnet(index)!)
        return (environment, subnet(index)!)
    }

    /// The bridge an environment gets.
    public nonisolated func bridgeName(_ environmentID: String) -> String {
        bridgePrefix + SHA256.hash(data: Data(environmentID.utf8)).hex.prefix(6)
    }

    func bridgeUp(_ environment: Environment, _ subnet: IPv4Network) async throws(Failure) {
        guard !bridgesUp.contains(environment.bridge) else { return }
        let gateway = "\(IPv4Network.format(subnet.host(1)))/\(subnet.prefixLength)"
        if try await !linkExists(environment.bridge) {
            // Another interface must not have the subnet meanwhile.
            if let clash = try await hostNetworks().first(where: { $0.0.overlaps(subnet) }) {
                throw Failure("the subnet \(subnet) of bridge \(environment.bridge) collides with \(clash.1) (\(clash.0)); remove that or move the pool with --cluster-network-pool")
            }
            try await run(configuration.ip, ["link", "add", environment.bridge, "type", "bridge"], "creating the bridge \(environment.bridge)")
        }
        let (_, addresses) = try await runOutput(configuration.ip, ["-j", "-4", "addr", "show", "dev", environment.bridge])
        if !addresses.joined().contains("\"local\":\"\(IPv4Network.format(subnet.host(1)))\"") {
            try await run(configuration.ip, ["addr", "add", gateway, "dev", environment.bridge], "addressing the bridge \(environment.bridge)")
        }
        try await run(configuration.ip, ["link", "set", environment.bridge, "up"], "bringing \(environment.bridge) up")
        bridgesUp.insert(environment.bridge)
    }

    func linkExists(_ name: String) async throws(Failure) -> Bool {
        let (termination, _) = try await runOutput(configuration.ip, ["link", "show", "dev", name], check: false)
        return termination.succeeded
    }

    /// Every IPv4 network the host has (routes and interface addresses), with where, except this
    /// cluster's own bridges.
    func hostNetworks() async throws(Failure) -> [(IPv4Network, String)] {
        var result: [(IPv4Network, String)] = []
        let (_, routeLines) = try await runOutput(configuration.ip, ["-j", "-4", "route", "show", "table", "all"])
        if let routes = try? JSONSerialization.jsonObject(with: Data(routeLines.joined().utf8)) as? [[String: Any]] {
            for route in routes {
                guard let destination = route["dst"] as? String, destination != "default" else { continue }
                let device = route["dev"] as? String ?? "?"
                if device.hasPrefix(bridgePrefix) { continue }
                let text = destination.contains("/") ? destination : destination + "/32"
                if let network = IPv4Network(text) { result.append((network, "the route \(destination) on \(device)")) }
            }
        }
        let (_, addressLines) = try await runOutput(configuration.ip, ["-j", "-4", "addr", "show"])
        if let links = try? JSONSerialization.jsonObject(with: Data(addressLines.joined().utf8)) as? [[String: Any]] {
            for link in links {
                let device = link["ifname"] as? String ?? "?"
                if device.hasPrefix(bridgePrefix) { continue }
                for info in link["addr_info"] as? [[String: Any]] ?? [] {
                    guard let local = info["local"] as? String, let length = info["prefixlen"] as? Int,
                          let network = IPv4Network("\(local)/\(length)") else { continue }
                    result.append((network, "the address \(local)/\(length) of \(device)"))
                }
            }
        }
        return result
    }

    /// Everything this cluster created on the host: namespaces, bridges, the table (`slipway down`).
    public func removeAll() async {
        for id in state.environments.values.flatMap(\.addresses.keys) { await detach(id) }
        for environment in state.environments.values {
            _ = try? await ChildProcess(configuration.ip, ["link", "delete", environment.bridge]).output()
        }
        _ = try? await ChildProcess(configuration.nft, ["delete", "table", "inet", table]).output()
        state = State()
        try? save()
        bridgesUp = []
        rulesFor = nil
    }

    /// `/etc/resolv.conf` for instances: the host's nameservers that an instance can reach.
    public nonisolated func resolvConf() -> String {
        let text = (try? String(contentsOfFile: configuration.resolvConf, encoding: .utf8)) ?? ""
        var lines = ["# Slipway: the host's resolvers an instance can reach"]
        for line in text.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 2, fields[0] == "nameserver", let address = IPv4Network.parse(String(fields[1])) else { continue }
            if address >> 24 == 127 { continue }
            lines.append("nameserver \(fields[1])")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    // MARK: Helpers

    func save() throws(Failure) {
        do {
            try AtomicFile.write(try JSONEncoder().encode(state), to: statePath)
        } catch let failure as AtomicFile.Failure {
            throw Failure(failure.description)
        } catch {
            throw Failure("cannot encode the network state: \(error)")
        }
    }

    func run(_ executable: String, _ arguments: [String], _ what: String) async throws(Failure) {
        _ = try await runOutput(executable, arguments, what: what)
    }

    @discardableResult
    func runOutput(_ executable: String, _ arguments: [String], what: String? = nil, check: Bool = true) async throws(Failure) -> (ChildProcess.Termination, [String]) {
        let result: (ChildProcess.Termination, [String])
        do {
            result = try await ChildProcess(executable, arguments).output()
        } catch {
            throw Failure("\(what ?? executable) failed: \(error)")
        }
        if check, !result.0.succeeded {
            throw Failure("\(what ?? "\(executable) \(arguments.joined(separator: " "))") failed: \(result.1.suffix(3).joined(separator: " / "))")
        }
        return result
    }
}

extension SHA256.Digest {
    /// Lower-case hex, for names derived from a hash.
    var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        return String(decoding: flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 15)]] }, as: UTF8.self)
    }
}
