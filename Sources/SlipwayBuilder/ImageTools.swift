import Foundation
import SlipwayProcess
import SlipwayProtos
import SlipwayRegistry

/// A registry the builder talks to, with its credentials.
struct RegistryTarget: Sendable, Equatable {
    var host: String
    var username: String = ""
    var password: String = ""
    var insecure: Bool = false

    init(host: String, username: String = "", password: String = "", insecure: Bool = false) {
        self.host = host
        self.username = username
        self.password = password
        self.insecure = insecure
    }

    init(_ registry: Slipway_Builder_V1_Registry) {
        self.init(host: registry.host, username: registry.username, password: registry.password, insecure: registry.insecure)
    }

    var client: RegistryClient {
        RegistryClient(host: host, insecure: insecure, credentials: username.isEmpty ? nil : .init(username: username, password: password))
    }
}

/// The files buildah and skopeo read for one build: which registries are plain HTTP
/// (`registries.conf`) and the logins (an auth file, 0600). Secrets never go on a command line.
struct ToolFiles {
    let directory: String
    var environment: [String: String]

    init(directory: String, registries: [RegistryTarget], extraInsecure: [String]) throws(BuildFailure) {
        self.directory = directory
        do {
            try Self.write(directory: directory, registries: registries, extraInsecure: extraInsecure)
        } catch {
            throw BuildFailure(.registryError, step: .build, "cannot write the registry configuration for buildah: \(error)")
        }
        environment = ChildProcess.baseEnvironment
        environment["CONTAINERS_REGISTRIES_CONF"] = directory + "/registries.conf"
        environment["REGISTRY_AUTH_FILE"] = directory + "/auth.json"
    }

    private static func write(directory: String, registries: [RegistryTarget], extraInsecure: [String]) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let insecure = Set(registries.filter(\.insecure).map(\.host) + extraInsecure).sorted()
        var conf = "unqualified-search-registries = []\nshort-name-mode = \"permissive\"\n"
        for host in insecure {
            conf += "\n[[registry]]\nlocation = \"\(host)\"\ninsecure = true\n"
        }
        try Data(conf.utf8).write(to: URL(fileURLWithPath: directory + "/registries.conf"))
        var auths: [String: [String: String]] = [:]
        for registry in registries where !registry.username.isEmpty && auths[registry.host] == nil {
            auths[registry.host] = ["auth": Data("\(registry.username):\(registry.password)".utf8).base64EncodedString()]
        }
        let authFile = directory + "/auth.json"
        let json = try JSONSerialization.data(withJSONObject: ["auths": auths])
        guard writePrivateFile(authFile, json) else {
            throw BuildFailure(.registryError, step: .build, "cannot write the registry login file")
        }
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// buildah and skopeo as the builder runs them: storage under the builder's state directory, the
/// `vfs` driver (what works as root without a daemon or fuse); RUN steps isolated by ``BuildIsolation``.
struct ImageTools: Sendable {
    var storageRoot: String
    var storageDriver = "vfs"

    var buildahGlobal: [String] {
        ["--storage-driver", storageDriver, "--root", storageRoot + "/storage", "--runroot", storageRoot + "/run"]
    }

    /// `isolation`: how RUN steps run (``BuildIsolation``), e.g. `--isolation oci --runtime … --network …`.
    func buildArguments(context: String, dockerfile: String, tag: String, buildArgs: [String: String], target: String, isolation: [String] = ["--isolation", "chroot"]) -> [String] {
        var arguments = buildahGlobal + ["bud"] + isolation + ["--layers", "--file", dockerfile, "--tag", tag]
        for (key, value) in buildArgs.sorted(by: { $0.key < $1.key }) { arguments += ["--build-arg", "\(key)=\(value)"] }
        if !target.isEmpty { arguments += ["--target", target] }
        return arguments + [context]
    }

    func pushArguments(tag: String, digestFile: String) -> [String] {
        buildahGlobal + ["push", "--digestfile", digestFile, tag, "docker://\(tag)"]
    }

    /// skopeo 1.9 ignores CONTAINERS_REGISTRIES_CONF: its (hidden) --registries-conf flag names the file.
    func copyArguments(source: String, destination: String, digestFile: String, files: ToolFiles) -> [String] {
        ["--registries-conf", files.directory + "/registries.conf", "copy", "--retry-times", "2", "--digestfile", digestFile, "docker://\(source)", "docker://\(destination)"]
    }
}
