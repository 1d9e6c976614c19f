import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The OCI runtime buildah runs a Dockerfile's `RUN` steps with (`buildah bud --runtime`): runc, with
/// each container's config hardened first. buildah puts the step in the build's network namespace
/// (`--network ns:`, made by ``EnvironmentNetworks``) and in a user namespace; this adds what
/// ``InstanceHardening`` gives instances — Docker's capabilities without `CAP_NET_RAW`, no new
/// privileges, the seccomp filter, the pids limit, runc's masked paths — and binds the host's
/// `/sys` read-only where buildah asks for a sysfs mount (which a user namespace cannot make in a
/// network namespace it does not own).
///
/// It is the builder executable itself, started as `slipway-builder <argument> <runc arguments>`
/// through a two-line script buildah can be pointed at.
public enum RuntimeShim {
    /// The first argument that turns the builder executable into the shim.
    public static let argument = "--oci-runtime-shim"
    public static let runc = "/usr/sbin/runc"

    /// Writes `<directory>/runc-shim`, which runs `executable` as the shim with its containers'
    /// state under `<directory>/runc` (one build's own: what it leaves is found and stopped by
    /// ``stopContainers(directory:)``); returns its path.
    public static func install(directory: String, executable: String) throws -> String {
        let path = directory + "/runc-shim"
        try FileManager.default.createDirectory(atPath: directory + "/runc", withIntermediateDirectories: true)
        let script = "#!/bin/sh\n# Written by slipway-builder: runc with each RUN step's config hardened.\nexec '\(executable)' \(argument) '\(directory)/runc' \"$@\"\n"
        try Data(script.utf8).write(to: URL(fileURLWithPath: path))
        chmod(path, 0o755)
        return path
    }

    /// Kills and deletes every container a shim installed in `directory` left (a step's processes
    /// run in a session of their own, so stopping buildah does not stop them). Blocks for as long
    /// as runc takes (a `list` when nothing is left).
    public static func stopContainers(directory: String) {
        let root = directory + "/runc"
        guard FileManager.default.fileExists(atPath: root) else { return }
        let ids = runcOutput(["--root", root, "list", "--quiet"]).split(separator: "\n").map(String.init)
        for id in ids where !id.isEmpty {
            _ = runcOutput(["--root", root, "delete", "--force", id])
        }
    }

    private static func runcOutput(_ arguments: [String]) -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: runc)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return "" }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }

    /// Hardens the bundle named by `--bundle`/`-b` (if any), then becomes runc with the same
    /// arguments.
    /// `arguments`: the containers' state directory, then runc's arguments (a `--root` of
    /// buildah's among them is replaced).
    public static func run(_ arguments: [String]) -> Never {
        guard let root = arguments.first else {
            FileHandle.standardError.write(Data("slipway runtime shim: no state directory given\n".utf8))
            exit(2)
        }
        let arguments = withoutRoot(Array(arguments.dropFirst()))
        if let bundle = bundle(in: arguments) {
            do {
                try harden(bundle: bundle)
            } catch {
                FileHandle.standardError.write(Data("slipway runtime shim: cannot harden \(bundle)/config.json: \(error)\n".utf8))
                exit(1)
            }
        }
        let argv = ([runc, "--root", root] + arguments).map { strdup($0) } + [nil]
        execv(runc, argv)
        FileHandle.standardError.write(Data("slipway runtime shim: cannot run \(runc): \(String(cString: strerror(errno)))\n".utf8))
        exit(127)
    }

    /// runc's arguments without a global `--root` (the options before the command).
    static func withoutRoot(_ arguments: [String]) -> [String] {
        var result: [String] = []
        var index = 0
        while index < arguments.count, arguments[index].hasPrefix("-") {
            if arguments[index] == "--root" {
                index += 2
                continue
            }
            if !arguments[index].hasPrefix("--root=") { result.append(arguments[index]) }
            index += 1
        }
        return result + arguments[min(index, arguments.count)...]
    }

    static func bundle(in arguments: [String]) -> String? {
        for (index, argument) in arguments.enumerated() {
            if (argument == "--bundle" || argument == "-b"), index + 1 < arguments.count { return arguments[index + 1] }
            if argument.hasPrefix("--bundle=") { return String(argument.dropFirst("--bundle=".count)) }
        }
        return nil
    }

    static func harden(bundle: String) throws {
        let path = bundle + "/config.json"
        guard var config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any] else {
            throw InstanceHardening.Failure("not an OCI runtime config")
        }
        try harden(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: path))
    }

    /// The build step's config as runc will run it.
    public static func harden(_ config: inout [String: Any]) throws {
        var linux = config["linux"] as? [String: Any] ?? [:]
        let namespaces = linux["namespaces"] as? [[String: Any]] ?? []
        guard namespaces.contains(where: { $0["type"] as? String == "user" }),
              let mapping = (linux["uidMappings"] as? [[String: Any]])?.first, (mapping["containerID"] as? Int) == 0,
              let hostID = mapping["hostID"] as? Int, hostID > 0 else {
            throw InstanceHardening.Failure("the build step has no user namespace mapping its root to an unprivileged id: refusing to run it")
        }
        let network = namespaces.first { $0["type"] as? String == "network" }
        guard let network else {
            throw InstanceHardening.Failure("the build step would share the host's network: refusing to run it")
        }
        linux["maskedPaths"] = Array(Set((linux["maskedPaths"] as? [String] ?? []) + InstanceHardening.maskedPaths)).sorted()
        linux["readonlyPaths"] = Array(Set((linux["readonlyPaths"] as? [String] ?? []) + InstanceHardening.readonlyPaths)).sorted()
        linux["seccomp"] = InstanceHardening.seccompProfile()
        var resources = linux["resources"] as? [String: Any] ?? [:]
        resources["pids"] = ["limit": InstanceHardening.pidsLimit]
        linux["resources"] = resources
        config["linux"] = linux

        var process = config["process"] as? [String: Any] ?? [:]
        process["noNewPrivileges"] = true
        let capabilities = InstanceHardening.capabilities
        process["capabilities"] = ["bounding": capabilities, "effective": capabilities, "permitted": capabilities]
        config["process"] = process

        if network["path"] != nil {
            // A namespace made beforehand (owned by the host's user namespace): no sysfs of its own.
            var mounts = (config["mounts"] as? [[String: Any]] ?? []).filter { mount in
                let destination = mount["destination"] as? String ?? ""
                return destination != "/sys" && !destination.hasPrefix("/sys/")
            }
            mounts.append(["destination": "/sys", "type": "bind", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]])
            config["mounts"] = mounts
        }
    }
}
