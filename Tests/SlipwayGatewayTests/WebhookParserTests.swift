import Crypto
import Foundation
import Testing

@testable import SlipwayGateway

/// Push payloads recorded from the four git hosts (Fixtures/webhooks/SOURCES.md), signed here the
/// way each host signs them, read by the parser.
@Suite struct WebhookParserTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/webhooks")
    static let secret = "It's a Secret to Everybody"

    static func body(_ name: String) throws -> [UInt8] {
        Array(try Data(contentsOf: fixtures.appendingPathComponent(name + ".json")))
    }

    static func hmac(_ body: [UInt8], _ secret: String = secret) -> String {
        HMAC<SHA256>.authenticationCode(for: body, using: SymmetricKey(data: Data(secret.utf8))).map { String(format: "%02x", $0) }.joined()
    }

    /// A request as the host sends it: its event, delivery id and signature headers.
    static func request(_ provider: GitProvider, _ body: [UInt8], event: String? = nil, secret: String = secret) -> WebhookRequest {
        var headers: [String: String]
        switch provider {
        case .github:
            headers = ["x-github-event": event ?? "push", "x-github-delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "x-hub-signature-256": "sha256=" + hmac(body, secret)]
        case .gitea:
            // Gitea also sends GitHub's headers; its own come first.
            headers = [
                "x-gitea-event": event ?? "push", "x-gitea-delivery": "f6266f16-1bf3-46a5-9ea4-602e06ead473", "x-gitea-signature": hmac(body, secret),
                "x-github-event": event ?? "push", "x-hub-signature-256": "sha256=" + hmac(body, "not the secret"),
            ]
        case .gitlab:
            headers = ["x-gitlab-event": event ?? "Push Hook", "x-gitlab-event-uuid": "13792a34-cac6-4fda-95a8-c58e00a3954e", "x-gitlab-token": secret]
        default:
            headers = ["x-event-key": event ?? "repo:push", "x-request-uuid": "e8f8c1d5-66e3-4c8d-9a39-bd7b2bd3d5b5", "x-hub-signature": "sha256=" + hmac(body, secret)]
        }
        return WebhookRequest(headers: headers, body: body)
    }

    @Test func githubsPublishedTestVectorVerifies() throws {
        // docs.github.com, "Validating webhook deliveries": this secret and body give this signature.
        let body = Array("Hello, World!".utf8)
        let request = WebhookRequest(
            headers: ["x-github-event": "push", "x-hub-signature-256": "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"], body: body)
        let delivery = try WebhookParser.identify(request)
        try WebhookParser.verify(request, delivery, secret: Self.secret)
        #expect(throws: WebhookRejection.self) { try WebhookParser.verify(request, delivery, secret: "another secret") }
    }

    @Test(arguments: [
        (GitProvider.github, "github-push", "refs/heads/master", "fd489864e7642b48eaad6e3f155c10e46810ec72", 2),
        (.github, "github-push-branch-create", "refs/heads/master", "6113728f27ae82c7b1a177c8d03f9e96e0adf246", 1),
        // GitLab's example lists 2 of its 4 commits (total_commits_count): the changed files are not all known.
        (.gitlab, "gitlab-push", "refs/heads/master", "da1560886d4f094c3e6c9ef40349f7d38b5d27d7", -1),
        (.gitlab, "gitlab-push-multi-commit", "refs/heads/master", "8f784b32840472e7fda687b1c18e2bef26af768b", 28),
        (.gitea, "gitea-push", "refs/heads/master", "67b56589a45103f891bdee7c0546e5d40bc02001", 1),
        (.bitbucket, "bitbucket-cloud-push", "refs/heads/main", "c14c1bb05dfb1fdcdf06b31485fff61b0ea44277", -1),
        (.bitbucket, "bitbucket-server-push", "refs/heads/feature/BB-1", "fb522a6f08c7c7df337312e4e65ec1b57710672e", -1),
    ])
    func recordedPushesGiveTheirBranchCommitAndFiles(provider: GitProvider, file: String, ref: String, commit: String, files: Int) throws {
        let body = try Self.body(file)
        let event = file.hasPrefix("bitbucket-server") ? "repo:refs_changed" : nil
        let request = Self.request(provider, body, event: event)
        let delivery = try WebhookParser.identify(request)
        #expect(delivery.provider == provider)
        #expect(delivery.isPush)
        #expect(!delivery.deliveryID.isEmpty && !delivery.deliveryID.hasPrefix("sha256:"))
        try WebhookParser.verify(request, delivery, secret: Self.secret)
        let push = try WebhookParser.push(delivery, body: body)
        #expect(push.ref == ref)
        #expect(push.commit == commit)
        #expect(!push.deleted)
        if files < 0 {
            #expect(push.files == nil, "Bitbucket does not list changed files; GitLab lists the newest 20 commits")
        } else {
            #expect(push.files?.count == files)
        }
    }

    @Test(arguments: [
        (GitProvider.github, "github-push-tag-delete", "refs/tags/simple-tag"),
        (.gitlab, "gitlab-push-branch-delete", "refs/heads/feature"),
        (.bitbucket, "bitbucket-cloud-push-branch-delete", nil),
        (.bitbucket, "bitbucket-server-push-branch-delete", "refs/heads/feature/BB-1"),
    ] as [(GitProvider, String, String?)])
    func recordedDeletionsAreDeletions(provider: GitProvider, file: String, ref: String?) throws {
        let body = try Self.body(file)
        let request = Self.request(provider, body, event: file.hasPrefix("bitbucket-server") ? "repo:refs_changed" : nil)
        let push = try WebhookParser.push(try WebhookParser.identify(request), body: body)
        #expect(push.deleted)
        #expect(push.commit.isEmpty)
        if let ref { #expect(push.ref == ref) }
    }

    @Test func otherEventsAreNotPushes() throws {
        let body = try Self.body("gitea-delete-branch")
        #expect(try WebhookParser.identify(Self.request(.gitea, body, event: "delete")).isPush == false)
        #expect(try WebhookParser.identify(Self.request(.github, Array("{}".utf8), event: "ping")).isPush == false)
        // GitLab's tag pushes are pushes, of a tag: the receiver ignores them as not a branch.
        let tag = try Self.body("gitlab-tag-push")
        let push = try WebhookParser.push(try WebhookParser.identify(Self.request(.gitlab, tag, event: "Tag Push Hook")), body: tag)
        #expect(push.ref == "refs/tags/v1.0.0" && push.branch == nil)
    }

    @Test(arguments: [GitProvider.github, .gitea, .gitlab, .bitbucket])
    func aWrongSecretOrAChangedBodyIsRejectedWith401(provider: GitProvider) throws {
        let body = try Self.body("github-push")
        let wrong = Self.request(provider, body, secret: "guessed")
        let error = #expect(throws: WebhookRejection.self) { try WebhookParser.verify(wrong, try WebhookParser.identify(wrong), secret: Self.secret) }
        #expect(error?.status == 401)
        if provider != .gitlab {
            var tampered = Self.request(provider, body)
            tampered.body[10] ^= 1
            #expect(throws: WebhookRejection.self) { try WebhookParser.verify(tampered, try WebhookParser.identify(tampered), secret: Self.secret) }
        }
        var unsigned = Self.request(provider, body)
        unsigned.headers = unsigned.headers.filter { !$0.key.contains("signature") && $0.key != "x-gitlab-token" }
        let missing = #expect(throws: WebhookRejection.self) { try WebhookParser.verify(unsigned, try WebhookParser.identify(unsigned), secret: Self.secret) }
        #expect(missing?.status == 401)
    }

    @Test func malformedOrForeignRequestsGet400() throws {
        let unknown = WebhookRequest(headers: ["content-type": "application/json"], body: Array("{}".utf8))
        #expect((#expect(throws: WebhookRejection.self) { try WebhookParser.identify(unknown) })?.status == 400)
        let github = try WebhookParser.identify(Self.request(.github, []))
        for body in ["not json", "[]", "{\"after\":\"abc\"}", "{\"ref\":\"refs/heads/main\",\"after\":\"not-a-commit\"}"] {
            let error = #expect(throws: WebhookRejection.self) { try WebhookParser.push(github, body: Array(body.utf8)) }
            #expect(error?.status == 400, "\(body)")
        }
        let bitbucket = try WebhookParser.identify(Self.request(.bitbucket, []))
        #expect((#expect(throws: WebhookRejection.self) { try WebhookParser.push(bitbucket, body: Array("{\"push\":{}}".utf8)) })?.status == 400)
    }

    @Test func aPushWithoutCommitsOrWithSomeLeftOutHasNoKnownFiles() throws {
        let github = try WebhookParser.identify(Self.request(.github, []))
        let created = #"{"ref":"refs/heads/new","after":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","commits":[]}"#
        #expect(try WebhookParser.push(github, body: Array(created.utf8)).files == nil)
        let truncated = #"{"ref":"refs/heads/main","after":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","total_commits_count":30,"commits":[{"added":["a"]}]}"#
        #expect(try WebhookParser.push(github, body: Array(truncated.utf8)).files == nil)
        let whole = #"{"ref":"refs/heads/main","after":"6113728f27ae82c7b1a177c8d03f9e96e0adf246","total_commits_count":1,"commits":[{"added":["a"],"removed":["b"]}]}"#
        #expect(try WebhookParser.push(github, body: Array(whole.utf8)).files == ["a", "b"])
    }

    @Test func aDeliveryWithoutAnIdIsKnownByItsBody() throws {
        let body = try Self.body("gitlab-push")
        var request = Self.request(.gitlab, body)
        request.headers["x-gitlab-event-uuid"] = nil
        let first = try WebhookParser.identify(request)
        let again = try WebhookParser.identify(request)
        #expect(first.deliveryID.hasPrefix("sha256:") && first.deliveryID == again.deliveryID)
    }
}
