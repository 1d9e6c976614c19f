import Crypto
import Foundation
import SlipwayProcess
import SlipwayProtos
import SlipwayServiceKit

/// Bare mirrors of the repositories the builder fetches, one per URL under `<state>/git`, so each
/// fetch after the first only brings what is new. Fetches of one repository are serialized.
actor GitMirrors {
    struct Limits: Sendable {
        var fetchTimeout: Duration = .seconds(300)
        var maxRepositoryBytes: Int64 = 2 * 1024 * 1024 * 1024
    }

    let directory: String
    let limits: Limits
    let ledger: ProcessLedger?
    private var busy: Set<String> = []
    private var waiters: [String: [CheckedContinuation<Void, Never>]] = [:]

    init(directory: String, limits: Limits, ledger: ProcessLedger? = nil) throws {
        self.directory = directory
        self.limits = limits
        self.ledger = ledger
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    }

    /// git's HOME: an empty directory, so no ~/.gitconfig, ~/.git-credentials or ~/.netrc of the
    /// builder's machine takes part in a tenant's fetch.
    nonisolated var home: String { directory + "/home" }

    /// Where the mirror of `url` lives: a hash of the URL, so no URL text reaches the file system.
    nonisolated func mirrorPath(for url: String) -> String {
        let digest = SHA256.hash(data: Data(url.utf8)).map { String(format: "%02x", $0) }.joined()
        return "\(directory)/\(digest.prefix(24)).git"
    }

    /// Brings the mirror of `source` up to date (unless it already has the exact commit asked for)
    /// and returns the full commit to build.
    func fetch(
        _ source: Slipway_Builder_V1_GitSource, transport: SourcePolicy.Transport, output: @escaping @Sendable (String) -> Void
    ) async throws(BuildFailure) -> String {
        let mirror = mirrorPath(for: source.url)
        await lock(mirror)
        defer { unlock(mirror) }
        try Task.checkCancellation(or: .canceled(.gitClone))
        let credentials = try GitCredentials(source, scratch: directory)
        defer { credentials.remove() }
        let git = GitCommand(gitDirectory: mirror, credentials: credentials, ledger: ledger, home: home, protocols: transport.allowedProtocols, output: output)

        if !FileManager.default.fileExists(atPath: mirror + "/HEAD") {
            try await git.run(["init", "--quiet", "--bare", mirror], withoutGitDirectory: true, failure: .gitError)
            try await git.run(["config", "gc.autoDetach", "false"], failure: .gitError)
        }
        if Self.isFullSHA(source.commit), (try? await git.run(["cat-file", "-e", "\(source.commit)^{commit}"], quiet: true, failure: .gitError)) != nil,
            await Self.mayBuild(source.commit, source, git)
        {
            // The mirror is shared by every request for this URL: what another tenant's credentials
            // fetched is served only to a request whose own credentials the repository accepts
            // (one round trip, no objects), or a private repository's known commit would build
            // for anyone who names it.
            try await git.listRemote(source.url, timeout: limits.fetchTimeout)
            output("commit \(source.commit) is already in the mirror: nothing to fetch")
            return source.commit
        }
        try await git.fetch(source.url, refspecs: ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*", "+HEAD:refs/slipway/HEAD"], timeout: limits.fetchTimeout)
        let size = Self.directorySize(mirror)
        if size > limits.maxRepositoryBytes {
            try? FileManager.default.removeItem(atPath: mirror)
            throw BuildFailure(.limitExceeded, step: .gitClone, "the repository is \(size / 1_048_576) MiB, over the builder's limit of \(limits.maxRepositoryBytes / 1_048_576) MiB (--builder-max-repository-bytes)")
        }
        return try await resolve(source, git: git)
    }

    private func resolve(_ source: Slipway_Builder_V1_GitSource, git: GitCommand) async throws(BuildFailure) -> String {
        func revParse(_ name: String) async -> String? {
            try? await git.run(["rev-parse", "--verify", "--quiet", "\(name)^{commit}"], quiet: true, failure: .gitError).first
        }
        if !source.commit.isEmpty {
            guard source.commit.allSatisfy(\.isHexDigit), (4...64).contains(source.commit.count) else {
                throw BuildFailure(.commitNotFound, step: .gitClone, "\"\(source.commit)\" is not a commit SHA")
            }
            if let commit = await revParse(source.commit) {
                guard await Self.mayBuild(commit, source, git) else {
                    throw BuildFailure(
                        .commitNotFound, step: .gitClone,
                        "commit \(source.commit) is on no branch or tag of \(Self.redacted(source.url)): push it to a branch or tag first (a commit reached only by its id may be a fork's)")
                }
                return commit
            }
            try Task.checkCancellation(or: .canceled(.gitClone))
            // A commit the platform built before that no branch or tag reaches any more: ask for it by id.
            if source.allowUnreachableCommit, Self.isFullSHA(source.commit) {
                try? await git.fetch(source.url, refspecs: [source.commit], timeout: limits.fetchTimeout, quiet: true)
                if let commit = await revParse(source.commit) { return commit }
                try Task.checkCancellation(or: .canceled(.gitClone))
            }
            throw BuildFailure(
                .commitNotFound, step: .gitClone,
                source.allowUnreachableCommit
                    ? "commit \(source.commit) is not in \(Self.redacted(source.url))"
                    : "commit \(source.commit) is on no branch or tag of \(Self.redacted(source.url)) (or does not exist): push it to a branch or tag first")
        }
        if source.ref.isEmpty {
            guard let commit = await revParse("refs/slipway/HEAD") else {
                throw BuildFailure(.commitNotFound, step: .gitClone, "\(Self.redacted(source.url)) has no default branch (is it empty?)")
            }
            return commit
        }
        for name in ["refs/heads/\(source.ref)", "refs/tags/\(source.ref)"] {
            if let commit = await revParse(name) { return commit }
        }
        throw BuildFailure(.commitNotFound, step: .gitClone, "\(Self.redacted(source.url)) has no branch or tag named \"\(source.ref)\"")
    }

    /// The content of `path` at `commit`, or nil when the commit has no such file.
    nonisolated func readFile(_ url: String, commit: String, path: String) async throws(BuildFailure) -> [UInt8]? {
        let mirror = mirrorPath(for: url)
        return try await GitCommand(gitDirectory: mirror, credentials: nil, ledger: ledger, home: home, protocols: "", output: { _ in }).blob(commit: commit, path: path)
    }

    /// Writes the tree of `commit` into `destination` (created), with submodules when asked.
    func checkout(
        _ source: Slipway_Builder_V1_GitSource, transport: SourcePolicy.Transport, commit: String, into destination: String,
        output: @escaping @Sendable (String) -> Void
    ) async throws(BuildFailure) {
        let mirror = mirrorPath(for: source.url)
        let credentials = try GitCredentials(source, scratch: directory)
        defer { credentials.remove() }
        let git = GitCommand(gitDirectory: mirror, credentials: credentials, ledger: ledger, home: home, protocols: transport.allowedProtocols, output: output)
        if source.submodules {
            // A real work tree: submodules need one. The clone borrows the mirror's objects.
            try await git.run(
                ["clone", "--quiet", "--shared", "--no-checkout", mirror, destination], withoutGitDirectory: true, failure: .gitError,
                environment: ["GIT_ALLOW_PROTOCOL": "file"])
            try await git.run(["-C", destination, "checkout", "--quiet", "--detach", commit], withoutGitDirectory: true, failure: .gitError)
            // git refuses local-path submodules by default (CVE-2022-39253); they are allowed only
            // when the repository itself is local, as in local mode.
            let local = if case .local = transport { true } else { false }
            try await git.run(["-C", destination] + (local ? ["-c", "protocol.file.allow=always"] : []) + ["submodule", "update", "--init", "--recursive"], withoutGitDirectory: true, failure: .gitError, timeout: limits.fetchTimeout)
        } else {
            try? FileManager.default.createDirectory(atPath: destination, withIntermediateDirectories: true)
            // A private index: checkouts from one mirror may run concurrently.
            let index = destination + ".index"
            defer { try? FileManager.default.removeItem(atPath: index) }
            try await git.run(["--work-tree", destination, "checkout", "--quiet", commit, "--", "."], failure: .gitError, environment: ["GIT_INDEX_FILE": index])
        }
    }

    /// Whether `commit` may be built: the request allows any commit, or a branch or tag reaches it.
    static func mayBuild(_ commit: String, _ source: Slipway_Builder_V1_GitSource, _ git: GitCommand) async -> Bool {
        if source.allowUnreachableCommit { return true }
        return await reachable(commit, git)
    }

    /// Whether a branch or tag of the mirror reaches `commit`.
    static func reachable(_ commit: String, _ git: GitCommand) async -> Bool {
        let lines = try? await git.run(["for-each-ref", "--count=1", "--format=%(refname)", "--contains", commit, "refs/heads", "refs/tags"], quiet: true, failure: .gitError)
        return !(lines ?? []).filter { !$0.isEmpty }.isEmpty
    }

    static func isFullSHA(_ text: String) -> Bool { text.count == 40 && text.allSatisfy(\.isHexDigit) }

    /// A URL without any user information (`https://user:secret@host/x` → `https://host/x`).
    static func redacted(_ url: String) -> String {
        guard var components = URLComponents(string: url), components.user != nil || components.password != nil else { return url }
        components.user = nil
        components.password = nil
        return components.string ?? url
    }

    static func directorySize(_ path: String) -> Int64 {
        guard let enumerator = FileManager.default.enumerator(atPath: path) else { return 0 }
        var total: Int64 = 0
        while let file = enumerator.nextObject() as? String {
            if let size = (try? FileManager.default.attributesOfItem(atPath: path + "/" + file))?[.size] as? NSNumber { total += size.int64Value }
        }
        return total
    }

    private func lock(_ key: String) async {
        if busy.insert(key).inserted { return }
        await withCheckedContinuation { waiters[key, default: []].append($0) }
    }

    private func unlock(_ key: String) {
        if var queue = waiters[key], !queue.isEmpty {
            let next = queue.removeFirst()
            waiters[key] = queue.isEmpty ? nil : queue
            next.resume()
        } else {
            busy.remove(key)
        }
    }
}

/// How git authenticates, without the secret on a command line or in a log: an askpass helper reads
/// the token from the environment; an SSH key goes to a 0600 file for the time of the command.
struct GitCredentials: Sendable {
    var environment: [String: String] = [:]
    var secrets: [String] = []
    private var files: [String] = []

    init(_ source: Slipway_Builder_V1_GitSource, scratch: String) throws(BuildFailure) {
        switch source.credentials {
        case .httpsToken(let token)?:
            let helper = scratch + "/askpass-v3.sh"
            if !FileManager.default.fileExists(atPath: helper) {
                // Prints the username or the token, both from the environment (the file holds no
                // secret), and only when git asks for the repository's own host — git's prompts
                // end "'https://HOST': " or "'https://user@HOST': " — so a submodule URL pointing
                // elsewhere, a look-alike host ending in the same name included, gets nothing.
                let script = "#!/bin/sh\ncase \"$1\" in\n  *\"://$SLIPWAY_GIT_HOST'\"*|*\"@$SLIPWAY_GIT_HOST'\"*) ;;\n  *) exit 1 ;;\nesac\ncase \"$1\" in\n  Username*) printf '%s\\n' \"$SLIPWAY_GIT_USERNAME\" ;;\n  *) printf '%s\\n' \"$SLIPWAY_GIT_TOKEN\" ;;\nesac\n"
                _ = FileManager.default.createFile(atPath: helper, contents: Data(script.utf8), attributes: [.posixPermissions: 0o700])
            }
            // Validation refused URLs without a host; an empty one here would match every prompt.
            guard let components = URLComponents(string: source.url), let host = components.host, !host.isEmpty else {
                throw BuildFailure(.gitError, step: .gitClone, "git.url names no host the token could be for")
            }
            environment["GIT_ASKPASS"] = helper
            environment["SLIPWAY_GIT_HOST"] = host + (components.port.map { ":\($0)" } ?? "")
            environment["SLIPWAY_GIT_USERNAME"] = token.username.isEmpty ? "x-access-token" : token.username
            environment["SLIPWAY_GIT_TOKEN"] = token.token
            secrets.append(token.token)
        case .sshKey(let key)?:
            let base = scratch + "/ssh-" + UUID().uuidString
            let keyFile = base + ".key"
            guard writePrivateFile(keyFile, Data(key.privateKey)) else {
                throw BuildFailure(.gitError, step: .gitClone, "cannot write the SSH key to a temporary file")
            }
            files.append(keyFile)
            var ssh = "ssh -F /dev/null -i \(keyFile) -o IdentitiesOnly=yes -o BatchMode=yes -o GlobalKnownHostsFile=/dev/null"
            if key.knownHosts.isEmpty {
                ssh += " -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=\(base).known_hosts"
            } else {
                _ = writePrivateFile(base + ".known_hosts", Data(key.knownHosts.utf8))
                ssh += " -o StrictHostKeyChecking=yes -o UserKnownHostsFile=\(base).known_hosts"
            }
            files.append(base + ".known_hosts")
            environment["GIT_SSH_COMMAND"] = ssh
        case nil:
            break
        }
    }

    func remove() {
        for file in files { try? FileManager.default.removeItem(atPath: file) }
    }

    /// `text` with every secret replaced by `***`.
    func redact(_ text: String) -> String {
        secrets.reduce(text) { $1.isEmpty ? $0 : $0.replacingOccurrences(of: $1, with: "***") }
    }
}

/// One git invocation against a mirror, with prompts disabled, credential helpers off, output redacted.
struct GitCommand: Sendable {
    var gitDirectory: String
    var credentials: GitCredentials?
    var ledger: ProcessLedger?
    /// An empty HOME (see `GitMirrors.home`).
    var home: String
    /// The transports git may use, submodules included (GIT_ALLOW_PROTOCOL); empty: none.
    var protocols: String
    var output: @Sendable (String) -> Void

    var environment: [String: String] {
        var environment = ChildProcess.baseEnvironment
        environment["HOME"] = home
        environment["XDG_CONFIG_HOME"] = home
        environment["GIT_TERMINAL_PROMPT"] = "0"
        environment["GIT_CONFIG_NOSYSTEM"] = "1"
        environment["GIT_CONFIG_GLOBAL"] = "/dev/null"
        environment["GIT_ALLOW_PROTOCOL"] = protocols.isEmpty ? "none" : protocols
        // ssh reads ~/.ssh from the passwd entry, not HOME: no config, no default identity (the
        // only key is a request's own deploy key), no host keys but the request's.
        environment["GIT_SSH_COMMAND"] = "ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes -o IdentityFile=/dev/null -o GlobalKnownHostsFile=/dev/null -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes"
        for (key, value) in credentials?.environment ?? [:] { environment[key] = value }
        return environment
    }

    @discardableResult
    func run(
        _ arguments: [String], withoutGitDirectory: Bool = false, quiet: Bool = false, failure reason: Slipway_Builder_V1_FailureReason,
        environment extra: [String: String] = [:], timeout: Duration? = nil
    ) async throws(BuildFailure) -> [String] {
        var environment = self.environment
        for (key, value) in extra { environment[key] = value }
        let full = (withoutGitDirectory ? [] : ["--git-dir", gitDirectory]) + ["-c", "credential.helper="] + arguments
        let process = {
            var process = ChildProcess("git", full, environment: environment)
            process.ledger = ledger
            return process
        }()
        let lines = LinesBox()
        let credentials = self.credentials
        let output = self.output
        let termination: ChildProcess.Termination
        do {
            termination = try await withTimeout(timeout) {
                try await process.run { _, line in
                    let clean = credentials?.redact(line) ?? line
                    lines.append(clean)
                    if !quiet { output(clean) }
                }
            }
        } catch is TimeoutError {
            throw BuildFailure(.limitExceeded, step: .gitClone, "git \(arguments.first ?? "") took longer than \(timeout!) (--builder-fetch-timeout)")
        } catch {
            try Task.checkCancellation(or: .canceled(.gitClone))
            throw BuildFailure(.gitError, step: .gitClone, "cannot run git: \(error)")
        }
        try Task.checkCancellation(or: .canceled(.gitClone))
        guard termination.succeeded else {
            throw BuildFailure(reason, step: .gitClone, "git \(arguments.first ?? "") failed: \(lines.last(5).joined(separator: " / "))")
        }
        return lines.all
    }

    /// `git fetch` from `url`; failures are classified (missing repository, bad credentials, timeout).
    func fetch(_ url: String, refspecs: [String], timeout: Duration, quiet: Bool = false) async throws(BuildFailure) {
        do {
            try await run(["fetch", "--prune", "--force", "--progress", "--no-write-fetch-head", url] + refspecs, quiet: quiet, failure: .gitError, timeout: timeout)
        } catch let failure where failure.reason == .gitError {
            throw Self.classify(failure, url: url)
        }
    }

    /// Asks the remote for its HEAD only: proves the credentials open the repository.
    func listRemote(_ url: String, timeout: Duration) async throws(BuildFailure) {
        do {
            try await run(["ls-remote", url, "HEAD"], quiet: true, failure: .gitError, timeout: timeout)
        } catch let failure where failure.reason == .gitError {
            throw Self.classify(failure, url: url)
        }
    }

    static func classify(_ failure: BuildFailure, url rawURL: String) -> BuildFailure {
        // Matched on git's words only: the URL itself (a path, a UUID) may contain anything.
        let text = failure.message.replacingOccurrences(of: rawURL, with: "").lowercased()
        let url = GitMirrors.redacted(rawURL)
        let authentication = ["authentication failed", "could not read username", "could not read password", "terminal prompts disabled",
                              "permission denied (publickey", "host key verification failed", "http basic: access denied", "returned error: 403"]
        if authentication.contains(where: text.contains) {
            return BuildFailure(.authenticationFailed, step: .gitClone, "\(url) refused the credentials (or needs some): \(failure.message)")
        }
        let missing = ["repository not found", "does not appear to be a git repository", "not found", "no such file or directory", "does not exist"]
        if missing.contains(where: text.contains) {
            return BuildFailure(.repositoryNotFound, step: .gitClone, "no repository at \(url): \(failure.message)")
        }
        return failure
    }

    /// The blob `commit:path` as bytes, or nil when there is no such file.
    func blob(commit: String, path: String) async throws(BuildFailure) -> [UInt8]? {
        // Written through a file: ChildProcess reads output as text lines. Arguments are passed as
        // positional parameters, never spliced into the script.
        let file = NSTemporaryDirectory() + "slipway-blob-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: file) }
        let process = ChildProcess("/bin/sh", ["-c", "exec git --git-dir \"$1\" cat-file blob \"$3\" > \"$2\"", "sh", gitDirectory, file, "\(commit):\(path)"], environment: environment)
        guard let termination = try? await process.run(onLine: { _, _ in }) else {
            throw BuildFailure(.gitError, step: .gitClone, "cannot run git")
        }
        guard termination.succeeded, let data = FileManager.default.contents(atPath: file) else { return nil }
        return Array(data)
    }
}

/// Lines kept by a command, for error messages.
final class LinesBox: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }
    func last(_ count: Int) -> [String] { lines.withLock { Array($0.suffix(count)) } }
}

import Synchronization

/// Writes `data` to a new file created with mode 0600 (never readable by others, not even for a
/// moment), flushed to disk. False when the file cannot be created.
func writePrivateFile(_ path: String, _ data: Data) -> Bool {
    let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0o600)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    guard fchmod(fd, 0o600) == 0 else { return false }
    let written = data.withUnsafeBytes { buffer -> Bool in
        var offset = 0
        while offset < buffer.count {
            let count = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            if count < 0 {
                if errno == EINTR { continue }
                return false
            }
            offset += count
        }
        return true
    }
    return written && fsync(fd) == 0
}
