import Foundation
import Logging
import SlipwayTestSupport
import Synchronization
import Testing

@testable import SlipwayCluster

/// The Kubernetes API client and the status it reads, against responses recorded from real API
/// servers (`Fixtures/kubernetes`, each file's origin in its SOURCES.md), replayed by a local HTTP
/// server that also records what the client asked.
@Suite struct KubernetesClientTests {
    static func fixture(_ name: String) throws -> String {
        let path = repositoryRoot + "/Tests/SlipwayClusterTests/Fixtures/kubernetes/" + name
        guard let data = FileManager.default.contents(atPath: path) else { throw TestFailure("missing fixture \(path)") }
        return String(decoding: data, as: UTF8.self)
    }

    static func object(_ name: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(fixture(name).utf8)) as? [String: Any])
    }

    /// A client of the replaying server, with a bearer token.
    static func client(_ server: TinyHTTPServer) throws -> KubernetesClient {
        var configuration = KubernetesClient.Configuration(server: URL(string: "http://127.0.0.1:\(server.port)")!)
        configuration.token = "t0ken"
        return try KubernetesClient(configuration, timeout: .seconds(5))
    }

    static func json(_ status: Int, _ body: String) -> TinyHTTPServer.Reply {
        TinyHTTPServer.Reply(status: status, headers: [("Content-Type", "application/json")], body: Array(body.utf8))
    }

    static let input: KubernetesManifests.Input = {
        var input = KubernetesManifests.Input(
            workload: .init(environmentID: "env_4f2a9c", serviceID: "svc_81be", serviceName: "web"), environmentName: "prod", image: "registry/web@sha256:0123")
        input.replicas = 2
        return input
    }()

    @Test func objectsMapToTheirResourcePaths() throws {
        #expect(try KubernetesClient.path(apiVersion: "v1", kind: "Namespace", namespace: nil, name: "slipway-env") == "/api/v1/namespaces/slipway-env")
        #expect(try KubernetesClient.path(apiVersion: "apps/v1", kind: "Deployment", namespace: "ns", name: "web") == "/apis/apps/v1/namespaces/ns/deployments/web")
        #expect(try KubernetesClient.path(apiVersion: "networking.k8s.io/v1", kind: "Ingress", namespace: "ns", name: nil) == "/apis/networking.k8s.io/v1/namespaces/ns/ingresses")
        #expect(throws: KubernetesError.self) { try KubernetesClient.path(apiVersion: "v1", kind: "Pod", namespace: nil, name: "p") }
        #expect(throws: KubernetesError.self) { try KubernetesClient.path(apiVersion: "batch/v1", kind: "Job", namespace: "ns", name: "j") }
    }

    @Test func aKubeconfigAsKubectlWritesItGivesServerNamespaceAndCredentials() throws {
        let text = try Self.fixture("kubeconfig.yaml")
        // Its current-context is empty: a context must be named.
        #expect { try KubernetesClient.Configuration.kubeconfig(text) } throws: { "\($0)".contains("no context given") }
        let scratch = try Configuration.scratch()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let exp = try KubernetesClient.Configuration.kubeconfig(text, context: "exp-scratch")
        #expect(exp.server.absoluteString == "https://5.6.7.8" && exp.namespace == "default" && exp.insecureSkipTLSVerify)
        // dev-frontend names its CA and client certificate by file (fake-ca-file …): a missing file is said.
        #expect { try KubernetesClient.Configuration.kubeconfig(text, context: "dev-frontend") } throws: { "\($0)".contains("fake-ca-file") }
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
        for name in ["fake-ca-file", "fake-cert-file", "fake-key-file"] { try pem.write(toFile: scratch + "/" + name, atomically: true, encoding: .utf8) }
        let absolute = text.replacingOccurrences(of: "fake-", with: scratch + "/fake-")
        let dev = try KubernetesClient.Configuration.kubeconfig(absolute, context: "dev-frontend")
        #expect(dev.server.absoluteString == "https://1.2.3.4" && dev.namespace == "frontend")
        #expect(dev.certificateAuthority == pem && dev.clientCertificate == pem && dev.clientKey == pem)
        #expect { try KubernetesClient.Configuration.kubeconfig(text, context: "nope") } throws: { "\($0)".contains("no contexts entry named \"nope\"") }
    }

    @Test func inClusterReadsTheServiceAccount() throws {
        let scratch = try Configuration.scratch()
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try "abc.def\n".write(toFile: scratch + "/token", atomically: true, encoding: .utf8)
        try "CA".write(toFile: scratch + "/ca.crt", atomically: true, encoding: .utf8)
        try "team-a".write(toFile: scratch + "/namespace", atomically: true, encoding: .utf8)
        let configuration = try KubernetesClient.Configuration.inCluster(
            environment: ["KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"], directory: scratch)
        #expect(configuration.server.absoluteString == "https://10.96.0.1:443")
        #expect(configuration.token == "abc.def" && configuration.certificateAuthority == "CA" && configuration.namespace == "team-a")
        #expect(throws: KubernetesError.self) { try KubernetesClient.Configuration.inCluster(environment: [:], directory: scratch) }
    }

    @Test func serverSideApplySendsAnApplyPatchAndReadsTheRecordedAnswer() async throws {
        let answer = try Self.fixture("apply-deployment-response.json")
        let server = try await TinyHTTPServer.start { _ in Self.json(200, answer) }
        defer { Task { await server.stop() } }
        let client = try Self.client(server)
        let applied = try await client.apply(KubernetesManifests.deployment(Self.input))

        let request = try #require(server.requests.first)
        #expect(request.method == "PATCH")
        #expect(request.path == "/apis/apps/v1/namespaces/slipway-env-4f2a9c/deployments/web?fieldManager=slipway&force=true")
        #expect(request.headers["content-type"] == "application/apply-patch+yaml")
        #expect(request.headers["authorization"] == "Bearer t0ken")
        let sent = try #require(try JSONSerialization.jsonObject(with: Data(request.body)) as? [String: Any])
        #expect(sent["kind"] as? String == "Deployment" && (sent["spec"] as? [String: Any])?["replicas"] as? Int == 2)
        // What the server answered, as it answered it: its managed fields show the apply.
        let managed = try #require((applied["metadata"] as? [String: Any])?["managedFields"] as? [[String: Any]])
        #expect(managed.contains { $0["operation"] as? String == "Apply" })
        // Its generation is ahead of what the controller observed: not rolled out yet.
        #expect(KubernetesStatus.rollout(applied) == .progressing("Waiting for deployment spec update to be observed..."))
    }

    @Test func theServersErrorsBecomeErrorsThatSayWhy() async throws {
        let conflict = try Self.fixture("status-conflict.json"), forbidden = try Self.fixture("status-forbidden.json"), missing = try Self.fixture("status-not-found.json")
        let server = try await TinyHTTPServer.start { request in
            switch request.method {
            case "PATCH": Self.json(409, conflict)
            case "DELETE": Self.json(404, missing)
            default: request.path.contains("/pods") ? Self.json(403, forbidden) : Self.json(404, missing)
            }
        }
        defer { Task { await server.stop() } }
        let client = try Self.client(server)
        let applyError = await #expect(throws: KubernetesError.self) { _ = try await client.apply(KubernetesManifests.service(Self.input), force: false) }
        #expect(applyError?.code == 409 && applyError?.reason == "Conflict")
        #expect(applyError?.message.hasPrefix("Apply failed with 2 conflicts: conflicts with \"jun\"") == true)
        #expect(server.requests.first?.path.hasSuffix("?fieldManager=slipway") == true)
        let listError = await #expect(throws: KubernetesError.self) { _ = try await client.list(apiVersion: "v1", kind: "Pod", namespace: "d", labelSelector: "a=b,c=d") }
        #expect(listError?.code == 403 && listError?.reason == "Forbidden")
        #expect(server.requests.last?.path == "/api/v1/namespaces/d/pods?labelSelector=a%3Db%2Cc%3Dd")
        let getError = await #expect(throws: KubernetesError.self) { _ = try await client.get(apiVersion: "apps/v1", kind: "Deployment", namespace: "d", name: "abc") }
        #expect(getError?.code == 404 && getError?.message == "pods \"abc\" not found")
        // Deleting what is not there is done, not an error.
        try await client.delete(apiVersion: "v1", kind: "Service", namespace: "d", name: "web")
        #expect(server.requests.last?.method == "DELETE")
    }

    @Test func rolloutsReadLikeKubectlRolloutStatus() throws {
        #expect(KubernetesStatus.rollout(try Self.object("deployment-rolling.json"))
            == .progressing("Waiting for deployment \"guestbook-ui\" rollout to finish: 1 old replicas are pending termination..."))
        #expect(KubernetesStatus.rollout(try Self.object("deployment-complete.json")) == .complete("deployment \"nginx\" successfully rolled out"))
        guard case .failed(let message) = KubernetesStatus.rollout(try Self.object("deployment-progress-deadline-exceeded.json")) else {
            Issue.record("a Deployment past its progress deadline is a failed rollout")
            return
        }
        #expect(message.hasPrefix("deployment \"bad-image-deployment\" exceeded its progress deadline"))
    }

    @Test func podsReadAsRunningStatusWithRestartsAndLastExit() throws {
        let crashing = KubernetesStatus.pod(try Self.object("pod-crashloop.json"))
        #expect(crashing.status == .error && crashing.restarts == 3)
        #expect(crashing.reason.hasPrefix("CrashLoopBackOff: Back-off 40s restarting failed container=main"))
        #expect(crashing.lastExit == "exited with status 1 (Error)" && !crashing.oomKilled)
        let running = KubernetesStatus.pod(try Self.object("pod-running.json"))
        #expect(running.status == .running && running.restarts == 0 && running.lastExit == nil)
        #expect(KubernetesStatus.workload([running, running]) == .running)
        #expect(KubernetesStatus.workload([running, crashing]) == .warning)
        #expect(KubernetesStatus.workload([crashing]) == .error)
        #expect(KubernetesStatus.workload([]) == .stopped)
    }

    @Test func podLogsAreReadWithTheirTimestampsAndFollowedFromTheLast() async throws {
        let log = try Self.fixture("pod-log-timestamps.txt"), short = try Self.fixture("pod-log-timestamps-short-fraction.txt")
        let server = try await TinyHTTPServer.start { request in
            TinyHTTPServer.Reply.text(200, request.path.contains("sinceTime") ? short : log)
        }
        defer { Task { await server.stop() } }
        let client = try Self.client(server)
        let lines = try await client.podLog(namespace: "ns", pod: "web-1")
        #expect(lines.count == log.split(separator: "\n").count)
        #expect(lines[0].timestamp == "2019-05-08T06:02:13.324986342Z")
        #expect(lines[0].text == "2019/05/08 06:02:13 http2: Framer 0xc4207ec1c0: read HEADERS flags=END_HEADERS stream=1 len=88")
        let next = try await client.podLog(namespace: "ns", pod: "web-1", since: lines.last!.timestamp)
        #expect(server.requests.last?.path == "/api/v1/namespaces/ns/pods/web-1/log?timestamps=true&limitBytes=1048576&sinceTime=\(lines.last!.timestamp.replacingOccurrences(of: ":", with: "%3A"))")
        // A timestamp with fewer than nine fraction digits (trailing zeros dropped) reads the same way.
        #expect(next.allSatisfy { $0.timestamp.hasSuffix("Z") && !$0.text.isEmpty })
    }

    @Test func theDriverAppliesEverythingAndFollowsTheRolloutToItsEnd() async throws {
        let rolling = try Self.fixture("deployment-rolling.json"), complete = try Self.fixture("deployment-complete.json")
        let deadline = try Self.fixture("deployment-progress-deadline-exceeded.json"), crashing = try Self.fixture("pod-crashloop.json")
        let gets = Atomic<Int>(0)
        let failing = Atomic<Bool>(false)
        let server = try await TinyHTTPServer.start { request in
            switch request.method {
            // An apply answers with the object as the server keeps it (here: as sent).
            case "PATCH": return Self.json(200, String(decoding: request.body, as: UTF8.self))
            case "GET" where request.path.contains("/pods"): return Self.json(200, "{\"kind\":\"PodList\",\"apiVersion\":\"v1\",\"items\":[\(crashing)]}")
            default:
                if failing.load(ordering: .relaxed) { return Self.json(200, deadline) }
                return Self.json(200, gets.add(1, ordering: .relaxed).newValue < 3 ? rolling : complete)
            }
        }
        defer { Task { await server.stop() } }
        var driver = KubernetesDriver(client: try Self.client(server), logger: Logger(label: "test"))
        driver.pollInterval = .milliseconds(10)
        let message = try await driver.deploy(Self.input, timeout: .seconds(10))
        #expect(message == "deployment \"nginx\" successfully rolled out")
        let applied = server.requests.filter { $0.method == "PATCH" }.map { String($0.path.split(separator: "?")[0]) }
        #expect(applied == [
            "/api/v1/namespaces/slipway-env-4f2a9c",
            "/apis/networking.k8s.io/v1/namespaces/slipway-env-4f2a9c/networkpolicies/slipway-environment",
            "/api/v1/namespaces/slipway-env-4f2a9c/resourcequotas/slipway-environment",
            "/api/v1/namespaces/slipway-env-4f2a9c/limitranges/slipway-environment",
            "/api/v1/namespaces/slipway-env-4f2a9c/configmaps/web-config",
            "/api/v1/namespaces/slipway-env-4f2a9c/secrets/web-secrets", "/apis/apps/v1/namespaces/slipway-env-4f2a9c/deployments/web",
            "/api/v1/namespaces/slipway-env-4f2a9c/services/web",
        ])
        #expect(gets.load(ordering: .relaxed) == 3, "followed until the Deployment said it was done")

        // Past its progress deadline: the failure names the pods that do not run and why.
        failing.store(true, ordering: .relaxed)
        let error = await #expect(throws: KubernetesError.self) { try await driver.waitRollout(Self.input, timeout: .seconds(10)) }
        #expect(error?.reason == "ProgressDeadlineExceeded")
        #expect(error?.message.contains("; my-pod: CrashLoopBackOff: Back-off 40s") == true)
        #expect(error?.message.contains("last exited with status 1 (Error)") == true)
    }
}

private enum Configuration {
    static func scratch() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-kube-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}
