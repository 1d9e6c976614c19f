import Foundation
import SlipwayRPC

/// Which git URLs a tenant may build from. https and ssh always; plain http only when the operator
/// allows it; a path on the builder's machine (or `file://`) only under a directory the operator
/// names (local mode's demo repositories, tests) — never the builder's own state, `/etc` or another
/// tenant's checkout. Anything else (`git://`, `ext::`, relative paths) is refused.
public struct SourcePolicy: Sendable, Equatable {
    /// `http://` URLs (credentials would cross the network in clear).
    public var allowHTTP = false
    /// Directories whose repositories may be named by path (resolved, symlinks followed).
    public var localRoots: [String] = []

    public init(allowHTTP: Bool = false, localRoots: [String] = []) {
        self.allowHTTP = allowHTTP
        self.localRoots = localRoots.map { Self.resolved($0) }
    }

    /// How git reaches a repository.
    public enum Transport: Sendable, Equatable {
        case https, http, ssh
        case local(path: String)

        /// The transports git may use for it and its submodules (GIT_ALLOW_PROTOCOL).
        var allowedProtocols: String {
            switch self {
            case .https: "https"
            case .http: "http:https"
            case .ssh: "ssh:https"
            case .local: "file:https"
            }
        }
    }

    /// The transport of `url`, or INVALID_ARGUMENT saying which URLs are accepted.
    public func check(_ url: String, hasSSHKey: Bool) throws(RPCError) -> Transport {
        let shown = GitMirrors.redacted(url)
        let accepted = "use https://host/owner/repo.git or ssh://git@host/owner/repo.git (or git@host:owner/repo.git) with git.ssh_key"
        let transport: Transport
        if let schemeEnd = url.range(of: "://") {
            let scheme = url[..<schemeEnd.lowerBound].lowercased()
            let rest = url[schemeEnd.upperBound...]
            if scheme == "file" {
                transport = .local(path: rest.hasPrefix("/") ? String(rest) : "/" + rest)
            } else {
                switch scheme {
                case "https": transport = .https
                case "http":
                    guard allowHTTP else {
                        throw RPCError(.invalidArgument, "git.url \"\(shown)\": plain http is not allowed on this platform (the operator can allow it with --builder-allow-http-sources); \(accepted)")
                    }
                    transport = .http
                case "ssh", "git+ssh", "ssh+git": transport = .ssh
                default:
                    throw RPCError(.invalidArgument, "git.url \"\(shown)\": the \(scheme):// transport is not allowed; \(accepted)")
                }
                let host = rest.prefix { $0 != "/" }.split(separator: "@").last.map(String.init) ?? ""
                guard !host.isEmpty, !host.hasPrefix("-") else { throw RPCError(.invalidArgument, "git.url \"\(shown)\" names no host; \(accepted)") }
                // What the credential helper and the password check read of an http(s) URL: one
                // that parses differently there than in git would let a token go to another host.
                if transport != .ssh, URLComponents(string: url)?.host?.isEmpty ?? true {
                    throw RPCError(.invalidArgument, "git.url \"\(shown)\" is not a well-formed URL (escape its special characters); \(accepted)")
                }
            }
        } else if url.hasPrefix("/") {
            transport = .local(path: url)
        } else if url.contains("::") {
            throw RPCError(.invalidArgument, "git.url \"\(shown)\": git remote helpers (transport::address) are not allowed; \(accepted)")
        } else if let colon = url.firstIndex(of: ":"), !url[..<colon].contains("/") {
            // scp-like: [user@]host:path
            let host = url[..<colon].split(separator: "@").last.map(String.init) ?? ""
            guard !host.isEmpty, !host.hasPrefix("-") else { throw RPCError(.invalidArgument, "git.url \"\(shown)\" names no host; \(accepted)") }
            transport = .ssh
        } else {
            throw RPCError(.invalidArgument, "git.url \"\(shown)\" is not a repository URL (a relative path?); \(accepted)")
        }
        switch transport {
        case .ssh where !hasSSHKey:
            throw RPCError(.invalidArgument, "git.url \"\(shown)\" is an SSH URL: give git.ssh_key (a deploy key); the builder never uses its own machine's SSH identity")
        case .local(let path):
            let real = Self.resolved(path.removingPercentEncoding ?? path)
            guard localRoots.contains(where: { real == $0 || real.hasPrefix($0.hasSuffix("/") ? $0 : $0 + "/") }) else {
                throw RPCError(
                    .invalidArgument,
                    localRoots.isEmpty
                        ? "git.url \"\(shown)\" is a path on the builder's machine: not allowed on this platform; \(accepted)"
                        : "git.url \"\(shown)\" is outside the directories local repositories may come from (--builder-local-sources); \(accepted)")
            }
            return .local(path: real)
        default:
            return transport
        }
    }

    /// `path` with symlinks and `..` resolved (as far as it exists), so a link cannot lead outside a root.
    static func resolved(_ path: String) -> String {
        guard let real = realpath(path, nil) else { return URL(fileURLWithPath: path).standardizedFileURL.path }
        defer { free(real) }
        return String(cString: real)
    }
}
