import Crypto
import Foundation
import SlipwayProtos
import SlipwayRegistry
import SlipwayRPC
import SlipwayServiceKit

/// A build request checked field by field; every refusal names the field and what to change.
struct ValidatedBuild: Sendable {
    var git: Slipway_Builder_V1_GitSource
    /// How git reaches the repository, as the source policy allowed it.
    var transport: SourcePolicy.Transport
    var rootPath: String
    /// The Dockerfile's path from the repository root.
    var dockerfileInRepository: String
    var buildArgs: [String: String]
    var target: String
    var repository: String
    var registry: RegistryTarget
    var timeoutSeconds: UInt32
    /// The RUN steps' network asked for (nil: the builder's default).
    var network: BuildIsolation.Network?

    init(_ request: Slipway_Builder_V1_BuildRequest, defaultRegistry: RegistryTarget, sources: SourcePolicy = SourcePolicy()) throws(RPCError) {
        try Self.validateID(request.buildId)
        try Self.validate(request.context)
        guard let git = request.git else { throw RPCError(.invalidArgument, "git is required: the repository URL and the commit or ref to build") }
        transport = try Self.validate(git, sources: sources)
        self.git = git
        rootPath = try Self.relativePath(request.rootPath, field: "root_path")
        let dockerfile = try Self.relativePath(request.dockerfilePath.isEmpty ? "Dockerfile" : request.dockerfilePath, field: "dockerfile_path")
        dockerfileInRepository = rootPath.isEmpty ? dockerfile : rootPath + "/" + dockerfile
        for key in request.buildArgs.keys {
            guard let first = key.first, first == "_" || (first.isASCII && first.isLetter),
                  key.allSatisfy({ $0 == "_" || ($0.isASCII && ($0.isLetter || $0.isNumber)) }) else {
                throw RPCError(.invalidArgument, "build_args: \"\(key)\" is not a valid argument name (letters, digits and _, not starting with a digit)")
            }
        }
        // Each is a `--build-arg NAME=VALUE` on buildah's command line: bounded so the arguments fit.
        let argBytes = request.buildArgs.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count }
        guard request.buildArgs.count <= Self.maxBuildArgs, argBytes <= Self.maxBuildArgBytes, !request.buildArgs.values.contains(where: { $0.utf8.contains(0) }) else {
            throw RPCError(.invalidArgument, "build_args: at most \(Self.maxBuildArgs) arguments of \(Self.maxBuildArgBytes) bytes in all, without NUL (got \(request.buildArgs.count), \(argBytes) bytes)")
        }
        buildArgs = request.buildArgs
        guard request.target.utf8.count <= 128, !request.target.hasPrefix("-"),
            request.target.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) })
        else {
            throw RPCError(.invalidArgument, "target \"\(request.target.prefix(140))\" is not a stage name (at most 128 letters, digits, '.', '_' or '-', not starting with '-')")
        }
        target = request.target
        let context = request.context!
        repository = request.repository.isEmpty ? "\(context.environmentId)/\(context.serviceId)".lowercased() : request.repository
        guard ImageReference.isValidRepository(repository) else {
            throw RPCError(.invalidArgument, "repository \"\(repository)\" is not a valid image name: lower-case letters, digits and . _ - between /")
        }
        registry = try Self.registry(request.registry, default: defaultRegistry)
        timeoutSeconds = request.timeoutSeconds
        switch request.network {
        case .unspecified: network = nil
        case .nat: network = .nat
        case .none: network = BuildIsolation.Network.none
        default: throw RPCError(.invalidArgument, "network: unknown value \(request.network); BUILD_NETWORK_NAT, BUILD_NETWORK_NONE or unset")
        }
    }

    /// The request's timeout, never longer than the operator's (`--builder-timeout`).
    func timeout(default value: Duration) -> Duration {
        timeoutSeconds > 0 ? min(.seconds(Int(timeoutSeconds)), value) : value
    }

    static let maxBuildArgs = 100
    static let maxBuildArgBytes = 64 * 1024

    /// The image tag: a hash of everything that determines the image — commit, root path,
    /// Dockerfile path and content, target, build args — prefixed with the commit for people.
    func imageTag(commit: String, dockerfile: [UInt8]) -> String {
        var hasher = SHA256()
        for part in ["slipway-build-v1", commit, rootPath, dockerfileInRepository, target] {
            hasher.update(data: Data(part.utf8))
            hasher.update(data: [0])
        }
        hasher.update(data: dockerfile)
        hasher.update(data: [0])
        for (key, value) in buildArgs.sorted(by: { $0.key < $1.key }) {
            hasher.update(data: Data("\(key)=\(value)".utf8))
            hasher.update(data: [0])
        }
        let hash = hasher.finalize().map { String(format: "%02x", $0) }.joined()
        return "\(commit.prefix(12))-\(hash.prefix(16))"
    }

    /// 1-128 letters, digits, '.', '_' or '-': build ids, and the logs service's rule for stream ids.
    static func isValidID(_ id: String) -> Bool {
        InputGrammar.isPlatformID(id)
    }

    static func validateID(_ id: String) throws(RPCError) {
        guard isValidID(id) else {
            throw RPCError(.invalidArgument, "build_id \"\(id)\" must be 1-128 letters, digits, '.', '_' or '-'")
        }
    }

    static func validate(_ context: Slipway_Builder_V1_BuildContext?) throws(RPCError) {
        guard let context, !context.environmentId.isEmpty, !context.deploymentId.isEmpty, !context.serviceId.isEmpty else {
            throw RPCError(.invalidArgument, "context needs environment_id, deployment_id and service_id: the build's log lines go to that deployment's stream")
        }
        // The logs service's rule for ids, so that no line is refused there.
        for (field, id) in [("environment_id", context.environmentId), ("deployment_id", context.deploymentId), ("service_id", context.serviceId)] {
            guard isValidID(id) else {
                throw RPCError(.invalidArgument, "context.\(field) \"\(id)\" must be 1-128 letters, digits, '.', '_' or '-'")
            }
        }
    }

    /// The longest git URL accepted.
    static let maxURLBytes = 2048

    static func validate(_ git: Slipway_Builder_V1_GitSource, sources: SourcePolicy) throws(RPCError) -> SourcePolicy.Transport {
        // A URL or ref starting with '-' would be read by git as an option.
        guard !git.url.isEmpty, git.url.utf8.count <= maxURLBytes, !git.url.hasPrefix("-") else {
            throw RPCError(.invalidArgument, "git.url \"\(GitMirrors.redacted(String(git.url.prefix(200))))\" is not a repository URL (at most \(maxURLBytes) bytes)")
        }
        if URLComponents(string: git.url)?.password != nil {
            throw RPCError(.invalidArgument, "git.url carries a password: pass it as git.https_token instead, so it stays out of logs")
        }
        guard git.ref.isEmpty || (!git.ref.hasPrefix("-") && !git.ref.contains("..") && !git.ref.contains(where: { $0.isWhitespace || "~^:?*[\\".contains($0) })) else {
            throw RPCError(.invalidArgument, "git.ref \"\(git.ref)\" is not a branch or tag name")
        }
        guard git.commit.isEmpty || (git.commit.count >= 4 && git.commit.count <= 64 && git.commit.allSatisfy(\.isHexDigit)) else {
            throw RPCError(.invalidArgument, "git.commit \"\(git.commit)\" is not a commit SHA (4-64 hex digits)")
        }
        if case .sshKey(let key)? = git.credentials, key.privateKey.isEmpty {
            throw RPCError(.invalidArgument, "git.ssh_key.private_key is empty")
        }
        let hasKey = if case .sshKey? = git.credentials { true } else { false }
        // The policy first (it names a refused transport, `ext::sh -c …` included), then the shape.
        let transport = try sources.check(git.url, hasSSHKey: hasKey)
        guard InputGrammar.hasNoSpaceOrControl(git.url) else {
            throw RPCError(.invalidArgument, "git.url \"\(GitMirrors.redacted(String(git.url.prefix(200))))\" is not a repository URL (no spaces or control characters; escape them as %20)")
        }
        return transport
    }

    /// A path inside the repository: relative, no `..`, normalized without a trailing slash.
    static func relativePath(_ path: String, field: String) throws(RPCError) -> String {
        let components = path.split(separator: "/").filter { $0 != "." }
        guard !path.hasPrefix("/"), !components.contains(".."), !path.contains("\0") else {
            throw RPCError(.invalidArgument, "\(field) \"\(path)\" must be a path inside the repository (relative, without ..)")
        }
        return components.joined(separator: "/")
    }

    static func registry(_ registry: Slipway_Builder_V1_Registry?, default value: RegistryTarget) throws(RPCError) -> RegistryTarget {
        guard let registry, !registry.host.isEmpty else { return value }
        // It lands in registries.conf (TOML) and in URLs as it is.
        guard registry.host.utf8.count <= 255, registry.host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".-:[]".contains($0)) }) else {
            throw RPCError(.invalidArgument, "registry.host \"\(registry.host)\" must be host[:port], without a scheme or path")
        }
        return RegistryTarget(registry)
    }
}

/// A mirror request checked field by field.
struct ValidatedMirror: Sendable {
    var source: ImageReference
    var sourceRegistry: RegistryTarget
    var target: ImageReference
    var targetRegistry: RegistryTarget

    /// `operatorRegistries`: the registries the operator named (`--builder-insecure-registry`), the
    /// only ones besides the platform registry that may be on loopback or reached over plain HTTP.
    init(_ request: Slipway_Builder_V1_MirrorRequest, defaultRegistry: RegistryTarget, operatorRegistries: [String] = []) throws(RPCError) {
        try ValidatedBuild.validateID(request.buildId)
        try ValidatedBuild.validate(request.context)
        guard let source = ImageReference(parsing: request.sourceImage) else {
            throw RPCError(.invalidArgument, "source_image \"\(request.sourceImage)\" is not an image reference (host/name:tag or host/name@sha256:...)")
        }
        self.source = source
        var sourceRegistry = RegistryTarget(host: source.host)
        if let credentials = request.sourceRegistry {
            sourceRegistry.username = credentials.username
            sourceRegistry.password = credentials.password
            sourceRegistry.insecure = credentials.insecure && operatorRegistries.contains(source.host)
        }
        self.sourceRegistry = sourceRegistry
        targetRegistry = try ValidatedBuild.registry(request.registry, default: defaultRegistry)
        // A tenant names the image: the builder must not become its way onto this machine's
        // loopback or a link-local metadata service. The platform registry is the one exception.
        if source.host != targetRegistry.host, source.host != defaultRegistry.host, !operatorRegistries.contains(source.host),
            RegistryClient.isInternal(RegistryClient.hostName(source.host))
        {
            throw RPCError(
                .invalidArgument,
                "source_image \"\(request.sourceImage)\": images are not pulled from loopback or link-local registries (unless the operator names one with --builder-insecure-registry)")
        }
        // From the platform registry itself: its own transport and, unless the request gave others,
        // its credentials, for the requesting environment's own images only (`<environment id>/…`):
        // the platform's login must not copy one tenant's image into another's repository.
        if source.host == targetRegistry.host {
            self.sourceRegistry.insecure = targetRegistry.insecure
            let own = source.repository.lowercased().hasPrefix((request.context?.environmentId ?? "").lowercased() + "/")
            if self.sourceRegistry.username.isEmpty, own {
                self.sourceRegistry.username = targetRegistry.username
                self.sourceRegistry.password = targetRegistry.password
            }
        }
        let repository = request.repository.isEmpty ? source.repository : request.repository
        guard ImageReference.isValidRepository(repository) else {
            throw RPCError(.invalidArgument, "repository \"\(repository)\" is not a valid image name")
        }
        // An image named by digest keeps a tag derived from it in the platform registry.
        let tag = source.tag ?? "sha256-" + (source.digest ?? "").dropFirst("sha256:".count).prefix(32)
        target = ImageReference(host: targetRegistry.host, repository: repository, tag: tag)
    }
}
