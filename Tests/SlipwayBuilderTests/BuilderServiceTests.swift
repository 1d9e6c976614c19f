import Foundation
import SlipwayProtos
import SlipwayRPC
import SlipwayRegistry
import SlipwayTestSupport
import Testing

@testable import SlipwayBuilder

/// The builder over RPC with real git repositories, real buildah and a real docker-registry.
/// Serialized: builds are heavy and the machine has two cores.
@Suite(.serialized) struct BuilderServiceTests {
    typealias API = Slipway_Builder_V1_Builder

    @Test func buildPushesTheImageAndTheSameCommitIsSkipped() async throws {
        try await BuilderTestEnvironment.with { env in
            let repository = try env.makeRepository()
            let commit = try env.git(repository, "rev-parse", "HEAD").trimmingCharacters(in: .whitespacesAndNewlines)

            let first = try await env.build(env.buildRequest(repository, imageName: "tests/push-skip"))
            #expect(first.result.outcome == .buildSucceeded, "\(first.result.message)")
            #expect(first.result.commit == commit)
            #expect(first.result.skipped == false)
            #expect(first.stepOutcomes == ["GIT_CLONE:stepSucceeded", "BUILD:stepSucceeded", "PUSH:stepSucceeded"])
            let image = try #require(first.result.image)
            #expect(image.reference == "\(env.registry.host)/tests/push-skip:\(image.tag)")
            #expect(image.tag.hasPrefix(String(commit.prefix(12))))
            // The registry serves the manifest the builder reported.
            let digest = try await env.registry.client.manifestDigest(repository: "tests/push-skip", reference: image.tag)
            #expect(digest == image.digest)

            // The same commit again: the registry has its image, nothing is built.
            let request = env.buildRequest(repository, commit: commit, imageName: "tests/push-skip")
            let second = try await env.build(request)
            #expect(second.result.outcome == .buildSucceeded, "\(second.result.message)")
            #expect(second.result.skipped)
            #expect(second.result.image?.digest == image.digest)
            #expect(second.stepOutcomes == ["GIT_CLONE:stepSucceeded", "BUILD:stepSkipped", "PUSH:stepSkipped"])
        }
    }

    @Test func buildLogsReachTheDeploymentStreamTaggedWithTheirStep() async throws {
        try await BuilderTestEnvironment.with { env in
            let repository = try env.makeRepository()
            let request = env.buildRequest(repository, imageName: "tests/logs")
            let run = try await env.build(request)
            #expect(run.result.outcome == .buildSucceeded, "\(run.result.message)")
            let lines = try await env.logLines(deployment: "deploy-\(request.buildId)")
            #expect(lines.contains { $0.step == "BUILD" && $0.text.hasPrefix("STEP 1/") && $0.source == .stdout })
            #expect(lines.contains { $0.step == "GIT_CLONE" })
            #expect(lines.contains { $0.step == "PUSH" && $0.text.contains("pushed") })
            #expect(lines.allSatisfy { $0.serviceId == "hello" })
        }
    }

    @Test func aChangedSourceFileRebuildsWithTheLayerCache() async throws {
        try await BuilderTestEnvironment.with { env in
            let repository = try env.makeRepository()
            let first = try await env.build(env.buildRequest(repository, imageName: "tests/cache"))
            #expect(first.result.outcome == .buildSucceeded, "\(first.result.message)")

            let changed = try env.commit(repository, "new page", files: ["www/index.html": "<h1>changed</h1>\n"])
            let request = env.buildRequest(repository, commit: changed, imageName: "tests/cache")
            let second = try await env.build(request)
            #expect(second.result.outcome == .buildSucceeded, "\(second.result.message)")
            #expect(second.result.skipped == false)
            #expect(second.result.image?.tag != first.result.image?.tag)
            #expect(second.result.image?.digest != first.result.image?.digest)
            // The layers before the changed file came from the cache.
            let lines = try await env.logLines(deployment: "deploy-\(request.buildId)")
            #expect(lines.contains { $0.text.contains("Using cache") })
        }
    }

    @Test func aBuildArgChangeForcesARebuild() async throws {
        try await BuilderTestEnvironment.with { env in
            let repository = try env.makeRepository()
            let first = try await env.build(env.buildRequest(repository, imageName: "tests/args"))
            #expect(first.result.outcome == .buildSucceeded, "\(first.result.message)")
            var request = env.buildRequest(repository, imageName: "tests/args")
            request.buildArgs["APP_FLAVOR"] = "blue"
            let second = try await env.build(request)
            #expect(second.result.outcome == .buildSucceeded, "\(second.result.message)")
            #expect(second.result.skipped == false)
            #expect(second.result.commit == first.result.commit)
            #expect(second.result.image?.tag != first.result.image?.tag)
        }
    }

    @Test func aBrokenDockerfileIsABuildErrorWithTheFailingLineInTheLogs() async throws {
        try await BuilderTestEnvironment.with { env in
            let repository = try env.makeRepository()
            let dockerfile = try String(contentsOfFile: repository + "/Dockerfile", encoding: .utf8) + "RUN echo about-to-fail && exit 3\n"
            try env.commit(repository, "broken", files: ["Dockerfile": dockerfile])
            let request = env.buildRequest(repository, imageName: "tests/broken")
            let run = try await env.build(request)
            #expect(run.result.outcome == .buildFailed)
            #expect(run.result.reason == .buildError)
            #expect(run.result.step == .build)
            #expect(run.stepOutcomes == ["GIT_CLONE:stepSucceeded", "BUILD:stepFailed"])
            #expect(run.result.message.contains("exit 3"), "\(run.result.message)")
            let lines = try await env.logLines(deployment: "deploy-\(request.buildId)")
            #expect(lines.contains { $0.step == "BUILD" && $0.text.contains("about-to-fail") })
            #expect(lines.contains { $0.step == "BUILD" && $0.level == .error && $0.text.contains("RUN echo about-to-fail && exit 3") })
            // Nothing was pushed.
            #expect(try await env.registry.client.tags(repository: "tests/broken").isEmpty)
        }
    }

    @Test func cancelStopsARunningBuildAndAQueuedOne() async throws {
        try await BuilderTestEnvironment.with(configure: { $0.maxConcurrentBuilds = 1 }) { env in
            let repository = try env.makeRepository()
            let marker = "slipway-cancel-\(UUID().uuidString.prefix(8))"
            let dockerfile = try String(contentsOfFile: repository + "/Dockerfile", encoding: .utf8) + "RUN echo \(marker) && sleep 600\n"
            try env.commit(repository, "slow", files: ["Dockerfile": dockerfile])

            let running = env.buildRequest(repository, imageName: "tests/cancel")
            var queuedRequest = env.buildRequest(repository, imageName: "tests/cancel")
            queuedRequest.buildArgs["OTHER"] = "1"
            let runningBuild = Task { try await env.build(running) }
            // The slow step is running once its output reaches the logs service.
            _ = try await env.waitForLogLine(deployment: "deploy-\(running.buildId)", containing: marker)
            let queuedBuild = Task { try await env.build(queuedRequest) }
            _ = try await env.waitForLogLine(deployment: "deploy-\(queuedRequest.buildId)", containing: "waiting for a build slot")

            var cancel = Slipway_Builder_V1_CancelRequest()
            cancel.buildId = queuedRequest.buildId
            #expect(try await env.builder.unary(API.Cancel.self, cancel).found)
            let queued = try await queuedBuild.value
            #expect(queued.queued.map(\.position) == [1])
            #expect(queued.result.outcome == .buildCanceled)

            cancel.buildId = running.buildId
            #expect(try await env.builder.unary(API.Cancel.self, cancel).found)
            let canceled = try await runningBuild.value
            #expect(canceled.result.outcome == .buildCanceled)
            #expect(canceled.result.step == .build)
            #expect(canceled.stepOutcomes == ["GIT_CLONE:stepSucceeded", "BUILD:stepCanceled"])
            // No process of the build is left, and nothing was pushed.
            #expect(Self.processes(containing: marker).isEmpty)
            #expect(try await env.registry.client.tags(repository: "tests/cancel").isEmpty)
            // Cancel of a finished build finds nothing.
            #expect(try await env.builder.unary(API.Cancel.self, cancel).found == false)
        }
    }

    @Test func aBuildOverItsTimeoutIsStopped() async throws {
        try await BuilderTestEnvironment.with { env in
            let repository = try env.makeRepository()
            let marker = "slipway-timeout-\(UUID().uuidString.prefix(8))"
            let dockerfile = try String(contentsOfFile: repository + "/Dockerfile", encoding: .utf8) + "RUN echo \(marker) && sleep 600\n"
            try env.commit(repository, "slow", files: ["Dockerfile": dockerfile])
            var request = env.buildRequest(repository, imageName: "tests/timeout")
            request.timeoutSeconds = 3
            let run = try await env.build(request)
            #expect(run.result.outcome == .buildTimedOut, "\(run.result.message)")
            #expect(run.result.step == .build)
            #expect(Self.processes(containing: marker).isEmpty)
            #expect(try await env.registry.client.tags(repository: "tests/timeout").isEmpty)
        }
    }

    @Test func missingRepositoryAndMissingCommitAreReported() async throws {
        try await BuilderTestEnvironment.with { env in
            let missing = try await env.build(env.buildRequest(env.directory + "/repos/no-such-repo", imageName: "tests/missing"))
            #expect(missing.result.outcome == .buildFailed)
            #expect(missing.result.reason == .repositoryNotFound, "\(missing.result.message)")
            #expect(missing.result.step == .gitClone)

            let repository = try env.makeRepository()
            let noCommit = try await env.build(env.buildRequest(repository, commit: String(repeating: "ab", count: 20), imageName: "tests/missing"))
            #expect(noCommit.result.reason == .commitNotFound, "\(noCommit.result.message)")

            var branch = env.buildRequest(repository, imageName: "tests/missing")
            branch.git?.ref = "no-such-branch"
            let noBranch = try await env.build(branch)
            #expect(noBranch.result.reason == .commitNotFound, "\(noBranch.result.message)")
        }
    }

    @Test func privateRepositoryNeedsTheRightTokenWhichNeverReachesTheLogs() async throws {
        try await BuilderTestEnvironment.with { env in
            let source = try env.makeRepository("private-src")
            let root = env.directory + "/git-server"
            try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
            try env.git(root, "clone", "--quiet", "--bare", source, root + "/app.git")
            let server = try await GitHTTPServer.start(root: root, user: "deployer", token: "s3cret-token-value")
            defer { server.stop() }
            let url = "http://127.0.0.1:\(server.port)/app.git"

            var wrong = env.buildRequest(url, imageName: "tests/private")
            var token = Slipway_Builder_V1_HttpsToken()
            token.username = "deployer"
            token.token = "wrong-token-value"
            wrong.git?.credentials = .httpsToken(token)
            let refused = try await env.build(wrong)
            #expect(refused.result.reason == .authenticationFailed, "\(refused.result.message)")
            #expect(!refused.result.message.contains("wrong-token-value"))

            var right = env.buildRequest(url, imageName: "tests/private")
            token.token = "s3cret-token-value"
            right.git?.credentials = .httpsToken(token)
            let built = try await env.build(right)
            #expect(built.result.outcome == .buildSucceeded, "\(built.result.message)")
            for request in [wrong, right] {
                let lines = try await env.logLines(deployment: "deploy-\(request.buildId)")
                #expect(!lines.isEmpty)
                #expect(!lines.contains { $0.text.contains("token-value") })
            }
            // The token is in no process's command line while git runs either (checked on the mirror's config too).
            let config = try String(contentsOfFile: Self.mirrorConfig(env), encoding: .utf8)
            #expect(!config.contains("token-value"))

            // The commit is in the builder's shared mirror now: naming it without the repository's
            // credentials (another tenant who learnt the SHA) still gets nothing built.
            var wrongToken = token
            wrongToken.token = "wrong-token-value"
            for credentials in [Slipway_Builder_V1_GitSource.OneOf_Credentials.httpsToken(wrongToken), nil] {
                var known = env.buildRequest(url, imageName: "tests/other-tenant")
                known.git?.commit = built.result.commit
                known.git?.credentials = credentials
                let denied = try await env.build(known)
                #expect(denied.result.outcome != .buildSucceeded && denied.result.reason == .authenticationFailed, "\(denied.result.message)")
            }
            var again = env.buildRequest(url, imageName: "tests/private-again")
            again.git?.commit = built.result.commit
            again.git?.credentials = .httpsToken(token)
            let rebuilt = try await env.build(again)
            #expect(rebuilt.result.outcome == .buildSucceeded, "\(rebuilt.result.message)")
        }
    }

    @Test func privateRepositoryOverSSHWithAKeyAndAPinnedHostKey() async throws {
        try await BuilderTestEnvironment.with { env in
            let source = try env.makeRepository("ssh-src")
            let sshd = try TestSSHServer.start(directory: env.directory + "/sshd")
            defer { sshd.stop() }
            try env.git(env.directory, "clone", "--quiet", "--bare", source, env.directory + "/ssh-repo.git")
            let url = "ssh://root@127.0.0.1:\(sshd.port)\(env.directory)/ssh-repo.git"

            func request(key: String, knownHosts: String) throws -> Slipway_Builder_V1_BuildRequest {
                var request = env.buildRequest(url, imageName: "tests/ssh")
                var credentials = Slipway_Builder_V1_SshKey()
                credentials.privateKey = Array(try Data(contentsOf: URL(fileURLWithPath: key)))
                credentials.knownHosts = knownHosts
                request.git?.credentials = .sshKey(credentials)
                return request
            }
            let built = try await env.build(try request(key: sshd.userKey, knownHosts: sshd.knownHostsLine))
            #expect(built.result.outcome == .buildSucceeded, "\(built.result.message)")

            let otherKey = try TestSSHServer.makeKey(env.directory + "/sshd/other")
            let wrongKey = try await env.build(try request(key: otherKey, knownHosts: sshd.knownHostsLine))
            #expect(wrongKey.result.reason == .authenticationFailed, "\(wrongKey.result.message)")

            // A host key that is not the pinned one is refused, whatever the client key.
            let otherHost = try String(contentsOfFile: otherKey + ".pub", encoding: .utf8).split(separator: " ").prefix(2).joined(separator: " ")
            let spoofed = try await env.build(try request(key: sshd.userKey, knownHosts: "[127.0.0.1]:\(sshd.port) \(otherHost)"))
            #expect(spoofed.result.reason == .authenticationFailed, "\(spoofed.result.message)")

            // The key files exist only while git runs.
            let scratch = try FileManager.default.contentsOfDirectory(atPath: env.directory + "/builder/git")
            #expect(!scratch.contains { $0.hasPrefix("ssh-") })
        }
    }

    @Test func submodulesAreCheckedOutWhenAsked() async throws {
        try await BuilderTestEnvironment.with { env in
            let library = env.directory + "/repos/library"
            try FileManager.default.createDirectory(atPath: library, withIntermediateDirectories: true)
            try env.git(library, "init", "--quiet", "--initial-branch", "main")
            try env.commit(library, "library", files: ["message.txt": "from the submodule\n"])
            let repository = try env.makeRepository()
            try env.git(repository, "-c", "protocol.file.allow=always", "submodule", "--quiet", "add", library, "lib")
            let dockerfile = try String(contentsOfFile: repository + "/Dockerfile", encoding: .utf8) + "COPY lib/message.txt /app/www/message.txt\n"
            try env.commit(repository, "use the submodule", files: ["Dockerfile": dockerfile])

            let without = try await env.build(env.buildRequest(repository, imageName: "tests/submodules"))
            #expect(without.result.reason == .buildError, "\(without.result.message)")

            var request = env.buildRequest(repository, imageName: "tests/submodules")
            request.git?.submodules = true
            let with = try await env.build(request)
            #expect(with.result.outcome == .buildSucceeded, "\(with.result.message)")
        }
    }

    @Test func mirroringCopiesAnImageAndSkipsWhenItIsThere() async throws {
        let source = try await TestRegistry.start(storage: BuilderTestEnvironment.temporaryDirectory("source-registry"))
        defer { source.stop() }
        // On loopback: pulled from only because the operator names it.
        try await BuilderTestEnvironment.with(configure: { $0.insecureRegistries = [source.host] }) { env in
            try await source.seed()
            let sourceDigest = try #require(try await source.client.manifestDigest(repository: "slipway/busybox", reference: "latest"))

            var request = Slipway_Builder_V1_MirrorRequest()
            request.buildId = UUID().uuidString
            var context = Slipway_Builder_V1_BuildContext()
            context.environmentId = "test"
            context.deploymentId = "deploy-\(request.buildId)"
            context.serviceId = "cache"
            request.context = context
            request.sourceImage = "\(source.host)/slipway/busybox:latest"
            var sourceRegistry = Slipway_Builder_V1_Registry()
            sourceRegistry.insecure = true
            request.sourceRegistry = sourceRegistry
            request.repository = "mirrored/busybox"

            let copied = try await env.mirror(request)
            #expect(copied.result.outcome == .buildSucceeded, "\(copied.result.message)")
            #expect(copied.result.skipped == false)
            #expect(copied.result.image?.digest == sourceDigest)
            #expect(copied.result.image?.reference == "\(env.registry.host)/mirrored/busybox:latest")
            #expect(try await env.registry.client.manifestDigest(repository: "mirrored/busybox", reference: "latest") == sourceDigest)
            let lines = try await env.logLines(deployment: "deploy-\(request.buildId)")
            #expect(lines.contains { $0.step == "MIRROR_IMAGE" && $0.source != .system })

            request.buildId = UUID().uuidString
            let again = try await env.mirror(request)
            #expect(again.result.skipped)
            #expect(again.stepOutcomes == ["MIRROR_IMAGE:stepSkipped"])

            // An image already in the platform registry is not copied at all.
            request.buildId = UUID().uuidString
            request.sourceImage = "\(env.registry.host)/slipway/busybox:latest"
            let same = try await env.mirror(request)
            #expect(same.result.skipped)
            #expect(same.result.image?.reference == "\(env.registry.host)/slipway/busybox:latest")

            request.buildId = UUID().uuidString
            request.sourceImage = "\(source.host)/slipway/no-such-image:1.0"
            let missing = try await env.mirror(request)
            #expect(missing.result.reason == .sourceImageNotFound)
        }
        // Not named by the operator, a loopback or link-local registry is refused before any request.
        try await BuilderTestEnvironment.with { env in
            for image in ["\(source.host)/slipway/busybox:latest", "169.254.169.254/latest/meta-data:1", "localhost:9/x:1"] {
                var request = Slipway_Builder_V1_MirrorRequest()
                request.buildId = UUID().uuidString
                var context = Slipway_Builder_V1_BuildContext()
                (context.environmentId, context.deploymentId, context.serviceId) = ("test", "deploy-\(request.buildId)", "cache")
                request.context = context
                request.sourceImage = image
                await #expect(throws: RPCError.self, "\(image) was pulled") { _ = try await env.mirror(request) }
            }
        }
    }

    @Test func pushesToARegistryThatNeedsALoginAndSaysWhenTheLoginIsWrong() async throws {
        try await BuilderTestEnvironment.with { env in
            let secured = try await TestRegistry.start(storage: BuilderTestEnvironment.temporaryDirectory("secured-registry"), login: ("pusher", "registry-pass"))
            defer { secured.stop() }
            let repository = try env.makeRepository()
            var target = Slipway_Builder_V1_Registry()
            target.host = secured.host
            target.username = "pusher"
            target.password = "wrong-pass"
            target.insecure = true

            var refused = env.buildRequest(repository, imageName: "tests/secured")
            refused.registry = target
            let denied = try await env.build(refused)
            #expect(denied.result.reason == .authenticationFailed, "\(denied.result.message)")
            #expect(denied.result.step == .build)

            target.password = "registry-pass"
            var request = env.buildRequest(repository, imageName: "tests/secured")
            request.registry = target
            let pushed = try await env.build(request)
            #expect(pushed.result.outcome == .buildSucceeded, "\(pushed.result.message)")
            let client = RegistryClient(host: secured.host, insecure: true, credentials: .init(username: "pusher", password: "registry-pass"))
            #expect(try await client.manifestDigest(repository: "tests/secured", reference: pushed.result.image?.tag ?? "") == pushed.result.image?.digest)
            for run in [refused, request] {
                #expect(!(try await env.logLines(deployment: "deploy-\(run.buildId)")).contains { $0.text.contains("pass") && $0.text.contains("registry-") })
            }
        }
    }

    @Test func badRequestsGetAnErrorThatSaysWhatToFix() async throws {
        try await BuilderTestEnvironment.with { env in
            let repository = try env.makeRepository()
            func status(_ change: (inout Slipway_Builder_V1_BuildRequest) -> Void) async -> (RPCStatusCode, String)? {
                var request = env.buildRequest(repository)
                change(&request)
                do {
                    _ = try await env.build(request)
                    return nil
                } catch let error as RPCError {
                    return (error.code, error.message)
                } catch {
                    return nil
                }
            }
            #expect(await status { $0.context = nil }?.0 == .invalidArgument)
            #expect(await status { $0.context?.deploymentId = "has space" }?.1.contains("deployment_id") == true)
            #expect(await status { $0.rootPath = "../outside" }?.1.contains("root_path") == true)
            #expect(await status { $0.git?.url = "--upload-pack=touch /tmp/x" }?.0 == .invalidArgument)
            #expect(await status { $0.git?.url = "https://user:pw@example.com/x.git" }?.1.contains("https_token") == true)
            #expect(await status { $0.repository = "Upper/Case" }?.1.contains("repository") == true)
            #expect(await status { $0.buildArgs["1BAD"] = "x" }?.0 == .invalidArgument)
            #expect(await status { $0.git?.commit = "not-hex" }?.0 == .invalidArgument)
            #expect(await status { var registry = Slipway_Builder_V1_Registry(); registry.host = "evil\"\ninsecure = true"; $0.registry = registry }?.1.contains("registry.host") == true)
            #expect(await status { $0.buildArgs = Dictionary(uniqueKeysWithValues: (0...100).map { ("A\($0)", "x") }) }?.1.contains("build_args") == true)
            #expect(await status { $0.target = "-x" }?.1.contains("target") == true)
            // The service is still up and builds.
            let run = try await env.build(env.buildRequest(repository, imageName: "tests/after-errors"))
            #expect(run.result.outcome == .buildSucceeded, "\(run.result.message)")
        }
    }

    @Test func sourcesAreHttpsOrSSHAndLocalPathsOnlyUnderTheOperatorsDirectories() async throws {
        // The operator's default: no http, no local paths.
        try await BuilderTestEnvironment.with(configure: { $0.sources = SourcePolicy() }) { env in
            let repository = try env.makeRepository()
            func refusal(_ url: String) async -> String? {
                do {
                    _ = try await env.build(env.buildRequest(url))
                    return nil
                } catch let error as RPCError {
                    return error.code == .invalidArgument ? error.message : "\(error.code): \(error.message)"
                } catch {
                    return "\(error)"
                }
            }
            for url in [repository, "file://" + repository, "/etc", "file:///etc/../etc", "git://example.com/x.git", "ext::sh -c touch% /tmp/pwned",
                        "http://example.com/x.git", "ssh://git@example.com/x.git", "git@example.com:x.git", "relative/path", "https:///x.git",
                        "https://example.com/a b.git", "https://exa mple.com/x.git", "https://example.com/x.git\tinjected", "https://ex|ample.com/x.git",
                        "https://example.com/" + String(repeating: "x", count: 2100)] {
                let message = await refusal(url)
                #expect(message != nil, "\(url) was accepted")
                #expect(message?.contains("git.url") == true, "\(url): \(message ?? "")")
            }
            #expect(await refusal(repository)?.contains("path on the builder's machine") == true)
            #expect(await refusal("ssh://git@example.com/x.git")?.contains("ssh_key") == true)
            #expect(FileManager.default.fileExists(atPath: "/tmp/pwned") == false)
        }
        // With a directory allowed: paths under it, not beside it, not through a symlink out of it.
        try await BuilderTestEnvironment.with { env in
            let repository = try env.makeRepository()
            #expect(try await env.build(env.buildRequest("file://" + repository, imageName: "tests/file-url")).result.outcome == .buildSucceeded)
            let outside = env.directory + "/outside"
            try FileManager.default.copyItem(atPath: repository, toPath: outside)
            try FileManager.default.createSymbolicLink(atPath: env.directory + "/repos/link", withDestinationPath: outside)
            for url in [outside, env.directory + "/repos/../outside", env.directory + "/repos/link"] {
                await #expect(throws: RPCError.self, "\(url) was accepted") { _ = try await env.build(env.buildRequest(url)) }
            }
        }
    }

    @Test func aCommitMustBeOnABranchOrTagUnlessThePlatformBuiltItBefore() async throws {
        try await BuilderTestEnvironment.with { env in
            let repository = try env.makeRepository()
            // A commit on a branch that is then deleted: only its id reaches it (as a fork's commit does on GitHub).
            try env.git(repository, "checkout", "--quiet", "-b", "topic")
            let orphan = try env.commit(repository, "only on topic", files: ["www/topic.html": "topic"])
            try env.git(repository, "checkout", "--quiet", "main")
            try env.git(repository, "branch", "--quiet", "-D", "topic")
            let refused = try await env.build(env.buildRequest(repository, commit: orphan, imageName: "tests/orphan"))
            #expect(refused.result.reason == .commitNotFound)
            #expect(refused.result.message.contains("on no branch or tag"), "\(refused.result.message)")
            var trusted = env.buildRequest(repository, commit: orphan, imageName: "tests/orphan")
            trusted.git?.allowUnreachableCommit = true
            let built = try await env.build(trusted)
            #expect(built.result.outcome == .buildSucceeded, "\(built.result.message)")
            #expect(built.result.commit == orphan)
            // Now in the mirror, it is still refused without the flag.
            let again = try await env.build(env.buildRequest(repository, commit: orphan, imageName: "tests/orphan"))
            #expect(again.result.reason == .commitNotFound)
            // A commit a tag reaches is fine.
            try env.git(repository, "tag", "v-orphan", orphan)
            let tagged = try await env.build(env.buildRequest(repository, commit: orphan, imageName: "tests/orphan"))
            #expect(tagged.result.outcome == .buildSucceeded, "\(tagged.result.message)")
        }
    }

    @Test func resolveCommitFollowsBranchesTagsAndTheDefaultBranch() async throws {
        try await BuilderTestEnvironment.with { env in
            let repository = try env.makeRepository()
            let first = try env.git(repository, "rev-parse", "HEAD").trimmingCharacters(in: .whitespacesAndNewlines)
            try env.git(repository, "tag", "v1")
            let second = try env.commit(repository, "two", files: ["www/two.html": "two"])
            var request = Slipway_Builder_V1_ResolveCommitRequest()
            var git = Slipway_Builder_V1_GitSource()
            git.url = repository
            request.git = git
            #expect(try await env.builder.unary(API.ResolveCommit.self, request).commit == second)
            request.git?.ref = "v1"
            #expect(try await env.builder.unary(API.ResolveCommit.self, request).commit == first)
            request.git?.ref = "main"
            #expect(try await env.builder.unary(API.ResolveCommit.self, request).commit == second)
            request.git?.ref = "nope"
            await #expect(throws: RPCError.self) { try await env.builder.unary(API.ResolveCommit.self, request) }
        }
    }

    // MARK: Helpers

    /// Processes whose command line contains `text`.
    static func processes(containing text: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> Int32? in
            guard let pid = Int32(entry), pid != getpid(),
                  let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
            let cmdline = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
            return cmdline.contains(text) ? pid : nil
        }
    }

    static func mirrorConfig(_ env: BuilderTestEnvironment) throws -> String {
        let git = env.directory + "/builder/git"
        let mirror = try #require(try FileManager.default.contentsOfDirectory(atPath: git).first { $0.hasSuffix(".git") })
        return git + "/" + mirror + "/config"
    }
}

/// tests/fixtures/git-http-server.py: git's smart HTTP backend behind basic authentication.
final class GitHTTPServer: Sendable {
    let port: Int
    private let process: Process

    private init(port: Int, process: Process) {
        self.port = port
        self.process = process
    }

    static func start(root: String, user: String, token: String) async throws -> GitHTTPServer {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", BuilderTestEnvironment.repositoryRoot + "/Tests/fixtures/git-http-server.py", root, user, token]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        // The server prints its port once it listens.
        var output = Data()
        while !String(decoding: output, as: UTF8.self).contains("\n") {
            let chunk = pipe.fileHandleForReading.availableData
            if chunk.isEmpty { throw TestFailure("git-http-server.py exited before listening") }
            output.append(chunk)
        }
        let line = String(decoding: output, as: UTF8.self).split(separator: "\n")[0]
        guard line.hasPrefix("listening "), let port = Int(line.dropFirst("listening ".count)) else {
            throw TestFailure("git-http-server.py printed \(line)")
        }
        return GitHTTPServer(port: port, process: process)
    }

    /// SIGKILL: Foundation's Process starts children with the test runner's signal mask, in
    /// which SIGTERM may be blocked.
    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

/// A real OpenSSH server on a free loopback port, accepting one generated user key for root.
final class TestSSHServer: Sendable {
    let port: Int
    let userKey: String
    /// known_hosts line pinning the server's host key.
    let knownHostsLine: String
    private let pidFile: String

    private init(port: Int, userKey: String, knownHostsLine: String, pidFile: String) {
        self.port = port
        self.userKey = userKey
        self.knownHostsLine = knownHostsLine
        self.pidFile = pidFile
    }

    static func makeKey(_ path: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/ssh-keygen")
        process.arguments = ["-q", "-t", "ed25519", "-N", "", "-f", path]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestFailure("ssh-keygen failed") }
        return path
    }

    static func start(directory: String) throws -> TestSSHServer {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true)
        let host = try makeKey(directory + "/host")
        let user = try makeKey(directory + "/user")
        try FileManager.default.copyItem(atPath: user + ".pub", toPath: directory + "/authorized_keys")
        let port = try TestRegistry.freePort()
        let config = """
        Port \(port)
        ListenAddress 127.0.0.1
        HostKey \(host)
        PidFile \(directory)/sshd.pid
        AuthorizedKeysFile \(directory)/authorized_keys
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        StrictModes no
        UsePAM no
        """
        try Data(config.utf8).write(to: URL(fileURLWithPath: directory + "/sshd_config"))
        // sshd daemonizes (no -D): the launcher exits once it listens. A Process left running would
        // hold up Foundation's reaping of the test's other child processes.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/sshd")
        process.arguments = ["-f", directory + "/sshd_config"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestFailure("sshd refused its configuration (port \(port))") }
        // The daemon listens only after it has forked away from the launcher: wait for the port.
        let deadline = ContinuousClock.now + .seconds(10)
        let server = TestSSHServer(port: port, userKey: user, knownHostsLine: "", pidFile: directory + "/sshd.pid")
        while !Self.accepts(port) {
            guard ContinuousClock.now < deadline else {
                server.stop()
                throw TestFailure("sshd did not listen on \(port) within 10 s")
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        let hostKey = try String(contentsOfFile: host + ".pub", encoding: .utf8).split(separator: " ").prefix(2).joined(separator: " ")
        return TestSSHServer(port: port, userKey: user, knownHostsLine: "[127.0.0.1]:\(port) \(hostKey)", pidFile: directory + "/sshd.pid")
    }

    static func accepts(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    func stop() {
        if let text = try? String(contentsOfFile: pidFile, encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            kill(pid, SIGKILL)
        }
    }
}
