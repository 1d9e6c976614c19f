import Foundation
import Logging
import SlipwayRegistry
import SlipwayTestSupport
import Testing

@testable import SlipwayCluster

/// `runAsNonRoot` where the image allows: the Kubernetes driver reads the image's user from a real
/// docker-registry (an image made with buildah, `USER 1000`) and tells its pods so; an image that
/// runs as root gets no such line. The API server is the replaying one of KubernetesClientTests.
@Suite struct KubernetesImageUserTests {
    @Test func numericUsersOtherThanRootAreNonRoot() {
        #expect(KubernetesCluster.isNonRootUser("1000"))
        #expect(KubernetesCluster.isNonRootUser("1000:1000"))
        #expect(!KubernetesCluster.isNonRootUser(""))
        #expect(!KubernetesCluster.isNonRootUser("0"))
        #expect(!KubernetesCluster.isNonRootUser("0:1000"))
        // A name cannot be checked by the kubelet.
        #expect(!KubernetesCluster.isNonRootUser("app"))
    }

    @Test func podsOfAnImageWithANumericUserRunAsNonRoot() async throws {
        try await TestRegistry.withSeeded("slipway-image-user") { scratch, registry in
            let base = "\(registry.host)/slipway/busybox:latest"
            let nonRoot = "\(registry.host)/test/nonroot:1"
            try Self.shell("""
                set -e
                b="buildah --storage-driver vfs --root \(scratch)/storage --runroot \(scratch)/run"
                c=$($b from --tls-verify=false \(base))
                $b config --user 1000:1000 "$c"
                $b commit --tls-verify=false "$c" docker://\(nonRoot) > /dev/null
                """)
            let user = try await registry.client.imageUser(repository: "test/nonroot", reference: "1")
            #expect(user == "1000:1000")
            #expect(try await registry.client.imageUser(repository: "slipway/busybox", reference: "latest") == "")

            let complete = try KubernetesClientTests.fixture("deployment-complete.json")
            let server = try await TinyHTTPServer.start { request in
                switch request.method {
                case "PATCH": return KubernetesClientTests.json(200, String(decoding: request.body, as: UTF8.self))
                case "GET" where request.path.contains("/pods"): return KubernetesClientTests.json(200, "{\"kind\":\"PodList\",\"apiVersion\":\"v1\",\"items\":[]}")
                default: return KubernetesClientTests.json(200, complete)
                }
            }
            defer { Task { await server.stop() } }
            var driver = KubernetesDriver(client: try KubernetesClientTests.client(server), logger: Logger(label: "test"))
            driver.pollInterval = .milliseconds(10)
            let cluster = try KubernetesCluster(driver: driver, directory: scratch + "/cluster", logs: nil, logger: Logger(label: "test"))

            func deployedSecurityContext(_ image: String) async throws -> [String: Any] {
                _ = try await cluster.deploy(DeploySpec(workload: .init(environmentID: "env_1", serviceID: "svc_1", serviceName: "web"), image: image))
                let patch = try #require(server.requests.last { $0.method == "PATCH" && $0.path.contains("/deployments/") })
                let object = try #require(try JSONSerialization.jsonObject(with: Data(patch.body)) as? [String: Any])
                let pod = (((object["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])
                return try #require((pod?["containers"] as? [[String: Any]])?.first?["securityContext"] as? [String: Any])
            }
            #expect(try await deployedSecurityContext(nonRoot)["runAsNonRoot"] as? Bool == true)
            #expect(try await deployedSecurityContext(base)["runAsNonRoot"] == nil)
        }
    }

    static func shell(_ script: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestFailure("the script failed: \(script)") }
    }
}
