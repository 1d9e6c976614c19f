import Foundation
import SlipwayProtos
import SlipwayRPC
import Synchronization
import SlipwayProcess
import SlipwayTestSupport
import Testing

@testable import SlipwayBuilder
@testable import SlipwayRegistry

@Suite struct ImageReferenceTests {
    @Test(arguments: [
        ("127.0.0.1:5000/slipway/busybox:1.35", "127.0.0.1:5000", "slipway/busybox", "1.35"),
        ("registry.example.com/team/app", "registry.example.com", "team/app", "latest"),
        ("nginx:1.25", "docker.io", "library/nginx", "1.25"),
        ("bitnami/redis", "docker.io", "bitnami/redis", "latest"),
        ("localhost/app:v2", "localhost", "app", "v2"),
    ])
    func parses(text: String, host: String, repository: String, tag: String) throws {
        let reference = try #require(ImageReference(parsing: text))
        #expect(reference.host == host)
        #expect(reference.repository == repository)
        #expect(reference.tag == tag)
    }

    @Test func parsesADigestReference() throws {
        let digest = "sha256:" + String(repeating: "a", count: 64)
        let reference = try #require(ImageReference(parsing: "127.0.0.1:5000/app@\(digest)"))
        #expect(reference.digest == digest)
        #expect(reference.tag == nil)
        #expect(reference.reference == digest)
    }

    @Test(arguments: ["", "Upper/case", "app:bad tag", "app@sha256:short", "a//b", "-app"])
    func refuses(text: String) {
        #expect(ImageReference(parsing: text) == nil)
    }
}

@Suite struct BuildRequestValidationTests {
    func request() -> Slipway_Builder_V1_BuildRequest {
        var request = Slipway_Builder_V1_BuildRequest()
        request.buildId = "b1"
        var context = Slipway_Builder_V1_BuildContext()
        context.environmentId = "Prod"
        context.deploymentId = "d1"
        context.serviceId = "Web"
        request.context = context
        var git = Slipway_Builder_V1_GitSource()
        git.url = "https://example.com/app.git"
        request.git = git
        return request
    }

    @Test func defaultsNameTheImageAfterEnvironmentAndServiceAndUseTheDefaultRegistry() throws {
        let validated = try ValidatedBuild(request(), defaultRegistry: RegistryTarget(host: "127.0.0.1:5000", insecure: true))
        #expect(validated.repository == "prod/web")
        #expect(validated.dockerfileInRepository == "Dockerfile")
        #expect(validated.registry.host == "127.0.0.1:5000")
    }

    @Test func rootPathAndDockerfilePathAreJoinedAndNormalized() throws {
        var request = request()
        request.rootPath = "./services/api/"
        request.dockerfilePath = "docker/Dockerfile.prod"
        let validated = try ValidatedBuild(request, defaultRegistry: RegistryTarget(host: "r"))
        #expect(validated.rootPath == "services/api")
        #expect(validated.dockerfileInRepository == "services/api/docker/Dockerfile.prod")
    }

    @Test func theTagChangesWithEverythingThatDeterminesTheImage() throws {
        let base = try ValidatedBuild(request(), defaultRegistry: RegistryTarget(host: "r"))
        let commit = String(repeating: "c", count: 40)
        let dockerfile = Array("FROM scratch\n".utf8)
        let tag = base.imageTag(commit: commit, dockerfile: dockerfile)
        #expect(tag.hasPrefix("cccccccccccc-"))
        #expect(ImageReference.isValidTag(tag))
        #expect(base.imageTag(commit: commit, dockerfile: dockerfile) == tag)
        #expect(base.imageTag(commit: String(repeating: "d", count: 40), dockerfile: dockerfile) != tag)
        #expect(base.imageTag(commit: commit, dockerfile: Array("FROM scratch\nENV A=1\n".utf8)) != tag)
        var withArg = base
        withArg.buildArgs = ["A": "1"]
        #expect(withArg.imageTag(commit: commit, dockerfile: dockerfile) != tag)
        var withTarget = base
        withTarget.target = "runtime"
        #expect(withTarget.imageTag(commit: commit, dockerfile: dockerfile) != tag)
        var withRoot = base
        withRoot.rootPath = "api"
        #expect(withRoot.imageTag(commit: commit, dockerfile: dockerfile) != tag)
    }

    @Test func theRunStepsNetworkIsTheBuildersDefaultUnlessAskedAndOnlyWhatTheBuilderCanGive() throws {
        var request = request()
        #expect(try ValidatedBuild(request, defaultRegistry: RegistryTarget(host: "r")).network == nil)
        request.network = .none
        #expect(try ValidatedBuild(request, defaultRegistry: RegistryTarget(host: "r")).network == BuildIsolation.Network.none)

        let withoutNetwork = BuildIsolation(network: .none, networks: nil, executable: "/bin/false")
        #expect(try withoutNetwork.network(for: nil) == BuildIsolation.Network.none)
        #expect(try withoutNetwork.network(for: BuildIsolation.Network.none) == BuildIsolation.Network.none)
        let refused = #expect(throws: RPCError.self) { try withoutNetwork.network(for: .nat) }
        #expect(refused?.code == .failedPrecondition && refused?.message.contains("--builder-isolation none") == true)
    }
}

@Suite struct SourcePolicyTests {
    @Test func httpsAndSSHWithAKeyAreAcceptedAndTheirTransportDecidesGitsProtocols() throws {
        let policy = SourcePolicy()
        #expect(try policy.check("https://github.com/o/r.git", hasSSHKey: false) == .https)
        #expect(try policy.check("ssh://git@github.com:22/o/r.git", hasSSHKey: true) == .ssh)
        #expect(try policy.check("git@github.com:o/r.git", hasSSHKey: true) == .ssh)
        #expect(SourcePolicy.Transport.https.allowedProtocols == "https")
        #expect(!SourcePolicy.Transport.ssh.allowedProtocols.contains("file"))
        #expect(throws: RPCError.self) { try policy.check("git@github.com:o/r.git", hasSSHKey: false) }
        #expect(throws: RPCError.self) { try policy.check("http://example.com/r.git", hasSSHKey: false) }
        #expect(try SourcePolicy(allowHTTP: true).check("http://example.com/r.git", hasSSHKey: false) == .http)
        #expect(throws: RPCError.self) { try policy.check("-oProxyCommand=x:y", hasSSHKey: true) }
    }

    @Test func localPathsOnlyUnderARootAfterResolvingSymlinks() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-sources-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root + "/repos/app", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let policy = SourcePolicy(localRoots: [root + "/repos"])
        #expect(try policy.check(root + "/repos/app", hasSSHKey: false) == .local(path: root + "/repos/app"))
        #expect(try policy.check("file://" + root + "/repos/app", hasSSHKey: false) == .local(path: root + "/repos/app"))
        try FileManager.default.createSymbolicLink(atPath: root + "/repos/out", withDestinationPath: "/etc")
        for url in [root + "/repos/out", root + "/repos/../", root + "/repos-other", "/etc/passwd"] {
            #expect(throws: RPCError.self, "\(url)") { try policy.check(url, hasSSHKey: false) }
        }
    }
}

@Suite struct RegistryRealmTests {
    @Test func onlyHttpsRealmsOffTheMachineAreFollowedUnlessTheRegistryItselfIsThere() {
        func refused(_ realm: String, registry: String = "registry.example.com", insecure: Bool = false) -> Bool {
            RegistryClient.refusal(realm: URLComponents(string: realm)!, registryHost: registry, insecure: insecure) != nil
        }
        #expect(!refused("https://auth.example.com/token"))
        #expect(refused("http://auth.example.com/token"))
        #expect(refused("https://127.0.0.1:7001/token"))
        #expect(refused("https://localhost/token"))
        #expect(refused("https://169.254.169.254/latest/meta-data"))
        #expect(refused("https://[::1]/token"))
        #expect(refused("https://[fe80::1]/token"))
        #expect(refused("file:///etc/passwd"))
        // A local registry the operator set up (plain http on loopback) keeps its own token service.
        #expect(!refused("http://127.0.0.1:5001/token", registry: "127.0.0.1:5000", insecure: true))
        #expect(refused("http://127.0.0.1:5001/token", registry: "127.0.0.1:5000", insecure: false))
        #expect(refused("http://localhost:5001/token", registry: "127.0.0.1:5000", insecure: true))
    }

    @Test func aHostileRegistryCannotSendTheClientToTheMachineOrIntoItsErrors() async throws {
        // Where a token request would land: loopback, as a platform service or a metadata endpoint would be.
        let machine = try await TinyHTTPServer.start { _ in .text(200, #"{"token":"t"}"#) }
        defer { Task { await machine.stop() } }
        let registry = try await TinyHTTPServer.start { request in
            if request.path.hasPrefix("/v2/leaky") { return .text(500, "SECRET-INTERNAL-DETAIL at /srv/registry") }
            return .text(401, "", headers: [("WWW-Authenticate", #"Bearer realm="http://localhost:\#(machine.port)/token",service="x""#)])
        }
        defer { Task { await registry.stop() } }
        let client = RegistryClient(host: "127.0.0.1:\(registry.port)", insecure: true, credentials: .init(username: "u", password: "p"))
        do {
            _ = try await client.manifestDigest(repository: "app", reference: "1")
            Issue.record("a realm on localhost was followed")
        } catch {
            #expect("\(error)".contains("loopback") || "\(error)".contains("https"), "\(error)")
        }
        #expect(machine.requests.isEmpty)
        do {
            _ = try await client.tags(repository: "leaky")
            Issue.record("a 500 was taken for an answer")
        } catch {
            #expect("\(error)".contains("500"))
            #expect(!"\(error)".contains("SECRET"), "\(error)")
        }
    }
}

@Suite struct RegistryChallengeTests {
    @Test func parsesABearerChallenge() {
        let (scheme, parameters) = RegistryClient.parseChallenge(#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:team/app:pull,push""#)
        #expect(scheme == "Bearer")
        #expect(parameters["realm"] == "https://auth.example.com/token")
        #expect(parameters["service"] == "registry.example.com")
        #expect(parameters["scope"] == "repository:team/app:pull,push")
    }

    @Test func parsesABasicChallenge() {
        let (scheme, parameters) = RegistryClient.parseChallenge(#"Basic realm="Registry Realm""#)
        #expect(scheme == "Basic")
        #expect(parameters["realm"] == "Registry Realm")
    }
}

@Suite struct ChildProcessTests {
    @Test func linesArriveSplitOnNewlinesAndCarriageReturnsFromBothStreams() async throws {
        let lines = Mutex<[String]>([])
        let termination = try await ChildProcess("/bin/sh", ["-c", "printf 'a\\nb\\rc'; printf 'err\\n' >&2; exit 3"]).run { stream, line in
            lines.withLock { $0.append("\(stream == .stdout ? "out" : "err"):\(line)") }
        }
        #expect(termination.exitCode == 3)
        #expect(Set(lines.withLock { $0 }) == ["out:a", "out:b", "out:c", "err:err"])
    }

    @Test func aLineLongerThanTheLimitIsCut() async throws {
        var process = ChildProcess("/bin/sh", ["-c", "head -c 2500 /dev/zero | tr '\\0' x"])
        process.maxLineBytes = 1000
        let (_, lines) = try await process.output()
        #expect(lines.map(\.count) == [1000, 1000, 500])
    }

    @Test func theChildGetsOnlyTheEnvironmentItIsGiven() async throws {
        setenv("SLIPWAY_TEST_SECRET", "do-not-inherit", 1)
        defer { unsetenv("SLIPWAY_TEST_SECRET") }
        let (_, lines) = try await ChildProcess("/usr/bin/env", [], environment: ["ONLY": "this"]).output()
        #expect(lines == ["ONLY=this"])
    }

    @Test func cancellationKillsTheWholeTreeIncludingChildrenInTheirOwnSession() async throws {
        let marker = "slipway-tree-\(UUID().uuidString.prefix(8))"
        // A child that starts a grandchild in a new session (out of the process group), then waits.
        let started = AsyncStream<Void>.makeStream()
        let task = Task {
            try await ChildProcess("/bin/sh", ["-c", "setsid sh -c 'sleep 300; echo \(marker)' & echo started; sleep 300 # \(marker)"]).run { _, line in
                if line == "started" { started.continuation.yield() }
            }
        }
        for await _ in started.stream { break }
        // Both sleeping shells are up once /proc shows two processes with the marker.
        while BuilderServiceTests.processes(containing: marker).count < 2 {
            try await Task.sleep(for: .milliseconds(10))
        }
        task.cancel()
        let termination = try await task.value
        #expect(termination.signal == SIGKILL)
        #expect(BuilderServiceTests.processes(containing: marker).isEmpty)
    }

    @Test func theChildGetsNoDescriptorOfOursBeyondItsStdio() async throws {
        // A descriptor opened without close-on-exec, as a service's sockets may be.
        let fd = open("/dev/null", O_RDONLY)
        #expect(fd > 2)
        defer { close(fd) }
        let (_, lines) = try await ChildProcess("/bin/sh", ["-c", "ls /proc/$$/fd"]).output()
        #expect(Set(lines) == ["0", "1", "2"], "got \(lines)")
    }

    @Test func aMissingExecutableIsAnError() async {
        await #expect(throws: ChildProcess.SpawnError.self) {
            _ = try await ChildProcess("/nonexistent/tool", []).output()
        }
    }
}

@Suite struct ProcessLedgerTests {
    /// A shell waiting on `sleep`, standing for a build a crashed builder left behind.
    func orphan(_ marker: String) throws -> pid_t {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "sleep 300; echo \(marker)"]
        try process.run()
        return process.processIdentifier
    }

    @Test func aRestartedBuilderKillsWhatItsPreviousLifeRecorded() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-ledger-\(UUID().uuidString)").path
        let marker = "slipway-ledger-\(UUID().uuidString.prefix(8))"
        let ledger = try ProcessLedger(directory: directory)
        let pid = try orphan(marker)
        ledger.record(pid)
        #expect(!BuilderServiceTests.processes(containing: marker).isEmpty)

        // A new ledger on the same directory: what a restarted builder does first.
        #expect(try ProcessLedger(directory: directory).killLeftovers() == 1)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        #expect(BuilderServiceTests.processes(containing: marker).isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).isEmpty)
    }

    @Test func aReusedPidIsLeftAlone() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-ledger-\(UUID().uuidString)").path
        let marker = "slipway-ledger-\(UUID().uuidString.prefix(8))"
        let ledger = try ProcessLedger(directory: directory)
        let pid = try orphan(marker)
        defer {
            // The shell and its sleep: an orphaned sleep would hold the test runner's output open.
            ProcessTree.kill(root: pid)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        // Recorded with another start time: the pid now belongs to a different process.
        _ = FileManager.default.createFile(atPath: "\(directory)/\(pid)", contents: Data("1".utf8))
        #expect(ledger.killLeftovers() == 0)
        #expect(!BuilderServiceTests.processes(containing: marker).isEmpty)
    }
}

@Suite struct GitCredentialTests {
    @Test func theAskpassHelperAnswersOnlyTheRepositorysHost() async throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-askpass-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var source = Slipway_Builder_V1_GitSource()
        source.url = "https://git.example.com:8443/team/app.git"
        var token = Slipway_Builder_V1_HttpsToken()
        token.token = "the-token"
        source.credentials = .httpsToken(token)
        let credentials = try GitCredentials(source, scratch: scratch)
        var environment = ChildProcess.baseEnvironment
        for (key, value) in credentials.environment { environment[key] = value }
        let helper = try #require(credentials.environment["GIT_ASKPASS"])

        let (_, username) = try await ChildProcess(helper, ["Username for 'https://git.example.com:8443': "], environment: environment).output()
        #expect(username == ["x-access-token"])
        let (_, password) = try await ChildProcess(helper, ["Password for 'https://x-access-token@git.example.com:8443': "], environment: environment).output()
        #expect(password == ["the-token"])
        // A submodule on another host asks too: it gets nothing.
        let (refused, other) = try await ChildProcess(helper, ["Password for 'https://attacker.example.net': "], environment: environment).output()
        #expect(refused.exitCode == 1)
        #expect(other.isEmpty)
        // Nor does a look-alike host whose name ends with the repository's.
        for prompt in ["Password for 'https://evilgit.example.com:8443': ", "Password for 'https://x@evil-git.example.com:8443': "] {
            let (lookalike, answer) = try await ChildProcess(helper, [prompt], environment: environment).output()
            #expect(lookalike.exitCode == 1 && answer.isEmpty, "\(prompt)")
        }
    }

    @Test func internalRegistryHostsAreRecognisedInEverySpelling() {
        for host in ["127.0.0.1", "127.1", "0x7f000001", "2130706433", "0.0.0.0", "169.254.169.254", "::1", "0:0:0:0:0:0:0:1", "::", "fe80::1", "FE80::1",
                     "::ffff:127.0.0.1", "::ffff:7f00:1", "::ffff:169.254.1.1", "localhost", "registry.localhost"] {
            #expect(RegistryClient.isInternal(host), "\(host)")
        }
        for host in ["10.0.0.1", "registry.example.com", "8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8", "fec0::1"] {
            #expect(!RegistryClient.isInternal(host), "\(host)")
        }
    }

    @Test func failuresAreClassifiedOnGitsWordsNotOnTheURL() {
        let url = "/tmp/env-D4037351/authentication-failed/repo"
        let failure = BuildFailure(.gitError, step: .gitClone, "git fetch failed: fatal: '\(url)' does not appear to be a git repository")
        #expect(GitCommand.classify(failure, url: url).reason == .repositoryNotFound)
        let denied = BuildFailure(.gitError, step: .gitClone, "git fetch failed: fatal: unable to access 'https://h/x.git/': The requested URL returned error: 403")
        #expect(GitCommand.classify(denied, url: "https://h/x.git").reason == .authenticationFailed)
    }
}

@Suite struct BuilderRegistryLoginTests {
    @Test func theAuthFileGivesThePushRegistrysLoginAndSaysWhatIsMissing() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("auth-\(UUID().uuidString).json").path
        let auth = Data("slipway:s3cr:et".utf8).base64EncodedString()
        try Data(#"{"auths":{"127.0.0.1:5000":{"auth":"\#(auth)"}}}"#.utf8).write(to: URL(fileURLWithPath: path))
        let configuration = try BuilderOptions.parse(["--builder-registry", "127.0.0.1:5000", "--builder-registry-auth-file", path]).configuration(environment: [:])
        #expect(configuration.registry.username == "slipway")
        #expect(configuration.registry.password == "s3cr:et")
        #expect {
            try BuilderOptions.parse(["--builder-registry", "10.0.0.1:5000", "--builder-registry-auth-file", path]).configuration(environment: [:])
        } throws: { "\($0)".contains("no \"auths\" entry with user:password for 10.0.0.1:5000") }
        #expect {
            try BuilderOptions.parse(["--builder-registry-auth-file", path + ".missing"]).configuration(environment: [:])
        } throws: { "\($0)".contains("cannot read") }
    }
}
