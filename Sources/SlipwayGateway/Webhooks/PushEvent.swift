import Crypto
import Foundation
import SlipwayProtos

typealias GitProvider = Slipway_Api_V1_GitProvider

/// A webhook request as received: lower-cased header names and the raw body.
struct WebhookRequest: Sendable {
    var headers: [String: String]
    var body: [UInt8]

    subscript(_ name: String) -> String? { headers[name.lowercased()] }
}

/// What a git host's delivery says, once recognised and verified.
struct WebhookDelivery: Sendable, Equatable {
    var provider: GitProvider
    /// The provider's delivery id (a hash of the body when the provider sends none).
    var deliveryID: String
    /// The event as the provider names it ("push", "Push Hook", "repo:push", ...).
    var event: String
    var isPush: Bool
}

/// A push: the branch or tag, the new head, and the changed paths when the payload lists them.
struct PushEvent: Sendable, Equatable {
    /// Full ref, e.g. refs/heads/main.
    var ref: String
    /// The new head commit; empty when the ref was deleted.
    var commit: String
    var deleted: Bool
    /// Paths added, modified or removed by the pushed commits; nil when the payload does not say
    /// (Bitbucket Cloud's push events do not list files).
    var files: [String]?

    var branch: String? { ref.hasPrefix("refs/heads/") ? String(ref.dropFirst("refs/heads/".count)) : nil }
}

/// A request the gateway refuses: HTTP status and why.
struct WebhookRejection: Error, Equatable {
    var status: Int
    var reason: String
}

/// Recognises the four git hosts by their headers, verifies the signature over the raw body in
/// constant time, and reads push payloads.
///
/// | host | event header | delivery id | signature |
/// |---|---|---|---|
/// | Gitea | X-Gitea-Event | X-Gitea-Delivery | X-Gitea-Signature: hex HMAC-SHA256 |
/// | GitHub | X-GitHub-Event | X-GitHub-Delivery | X-Hub-Signature-256: sha256=hex HMAC-SHA256 |
/// | GitLab | X-Gitlab-Event | X-Gitlab-Event-UUID | X-Gitlab-Token: the secret itself |
/// | Bitbucket | X-Event-Key | X-Request-UUID (Cloud), X-Request-Id (Data Center) | X-Hub-Signature: sha256=hex HMAC-SHA256 |
///
/// Gitea also sends GitHub's headers, so it is recognised first.
enum WebhookParser {
    /// Which host sent the request, its event and delivery id (400 for anything else).
    static func identify(_ request: WebhookRequest) throws(WebhookRejection) -> WebhookDelivery {
        let bodyID = "sha256:" + SHA256.hash(data: request.body).map { String(format: "%02x", $0) }.joined()
        if let event = request["x-gitea-event"] {
            return WebhookDelivery(provider: .gitea, deliveryID: request["x-gitea-delivery"] ?? bodyID, event: event, isPush: event == "push")
        }
        if let event = request["x-github-event"] {
            return WebhookDelivery(provider: .github, deliveryID: request["x-github-delivery"] ?? bodyID, event: event, isPush: event == "push")
        }
        if let event = request["x-gitlab-event"] {
            let id = request["x-gitlab-event-uuid"] ?? request["idempotency-key"] ?? bodyID
            return WebhookDelivery(provider: .gitlab, deliveryID: id, event: event, isPush: event == "Push Hook" || event == "Tag Push Hook")
        }
        if let event = request["x-event-key"] {
            let id = request["x-request-uuid"] ?? request["x-request-id"] ?? bodyID
            return WebhookDelivery(provider: .bitbucket, deliveryID: id, event: event, isPush: event == "repo:push" || event == "repo:refs_changed")
        }
        throw WebhookRejection(
            status: 400, reason: "not a webhook from a known git host (no X-GitHub-Event, X-Gitlab-Event, X-Event-Key or X-Gitea-Event header)")
    }

    /// Checks the delivery's signature (or GitLab's token) against the webhook's secret.
    static func verify(_ request: WebhookRequest, _ delivery: WebhookDelivery, secret: String) throws(WebhookRejection) {
        switch delivery.provider {
        case .gitea: try verifyHMAC(request["x-gitea-signature"], prefix: "", header: "X-Gitea-Signature", body: request.body, secret: secret)
        case .github: try verifyHMAC(request["x-hub-signature-256"], prefix: "sha256=", header: "X-Hub-Signature-256", body: request.body, secret: secret)
        case .bitbucket: try verifyHMAC(request["x-hub-signature"], prefix: "sha256=", header: "X-Hub-Signature", body: request.body, secret: secret)
        default:
            guard let token = request["x-gitlab-token"] else {
                throw WebhookRejection(status: 401, reason: "no X-Gitlab-Token header: set the webhook's secret token in GitLab")
            }
            guard Authenticator.constantTimeEqual(token, secret) else {
                throw WebhookRejection(status: 401, reason: "X-Gitlab-Token does not match the webhook's secret")
            }
        }
    }

    static func verifyHMAC(_ value: String?, prefix: String, header: String, body: [UInt8], secret: String) throws(WebhookRejection) {
        guard let value else { throw WebhookRejection(status: 401, reason: "no \(header) header: set the webhook's secret on the git host") }
        let expected = prefix + HMAC<SHA256>.authenticationCode(for: body, using: SymmetricKey(data: Data(secret.utf8)))
            .map { String(format: "%02x", $0) }.joined()
        guard Authenticator.constantTimeEqual(value.lowercased(), expected) else {
            throw WebhookRejection(status: 401, reason: "\(header) does not match the body signed with the webhook's secret")
        }
    }

    /// Reads a push event's payload.
    static func push(_ delivery: WebhookDelivery, body: [UInt8]) throws(WebhookRejection) -> PushEvent {
        guard let json = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else {
            throw WebhookRejection(status: 400, reason: "the payload is not a JSON object")
        }
        switch delivery.provider {
        case .bitbucket: return try bitbucket(json)
        default: return try githubLike(json)
        }
    }

    /// GitHub, Gitea and GitLab: `ref`, `after`, and `commits[].added/modified/removed`.
    static func githubLike(_ json: [String: Any]) throws(WebhookRejection) -> PushEvent {
        guard let ref = json["ref"] as? String, !ref.isEmpty else { throw WebhookRejection(status: 400, reason: "the push payload has no \"ref\"") }
        let after = (json["after"] as? String) ?? ""
        let zero = !after.isEmpty && after.allSatisfy { $0 == "0" }
        let deleted = (json["deleted"] as? Bool) ?? zero
        let commit = deleted ? "" : ((json["checkout_sha"] as? String).flatMap { $0.isEmpty ? nil : $0 } ?? after)
        guard deleted || isCommit(commit) else { throw WebhookRejection(status: 400, reason: "the push payload's \"after\" is not a commit id: \"\(after.prefix(80))\"") }
        let commits = (json["commits"] as? [[String: Any]]) ?? []
        var files: [String] = []
        for commit in commits {
            for key in ["added", "modified", "removed"] { files += (commit[key] as? [String]) ?? [] }
        }
        // No commit listed (a new branch), or fewer than were pushed (GitLab lists the newest 20):
        // the changed files are not known, so the path filter cannot rule the push out.
        let total = (json["total_commits_count"] as? Int) ?? commits.count
        let known = !commits.isEmpty && total <= commits.count
        return PushEvent(ref: ref, commit: commit, deleted: deleted, files: known ? Array(Set(files)).sorted() : nil)
    }

    /// Bitbucket Cloud: `push.changes[].new` (null when the branch was deleted); Bitbucket Data
    /// Center: `changes[].ref.id`, `toHash`, `type` (DELETE). Neither lists changed files.
    static func bitbucket(_ json: [String: Any]) throws(WebhookRejection) -> PushEvent {
        if let changes = json["changes"] as? [[String: Any]] {
            guard let change = changes.last, let ref = (change["ref"] as? [String: Any])?["id"] as? String ?? change["refId"] as? String else {
                throw WebhookRejection(status: 400, reason: "the repo:refs_changed payload has no changes[].ref.id")
            }
            let to = (change["toHash"] as? String) ?? ""
            let deleted = (change["type"] as? String) == "DELETE" || to.allSatisfy { $0 == "0" }
            guard deleted || isCommit(to) else { throw WebhookRejection(status: 400, reason: "the repo:refs_changed payload's toHash is not a commit id") }
            return PushEvent(ref: ref, commit: deleted ? "" : to, deleted: deleted, files: nil)
        }
        guard let push = json["push"] as? [String: Any], let changes = push["changes"] as? [[String: Any]], let change = changes.last else {
            throw WebhookRejection(status: 400, reason: "the repo:push payload has no push.changes")
        }
        if let new = change["new"] as? [String: Any] {
            let type = (new["type"] as? String) ?? "branch"
            guard let name = new["name"] as? String, let target = new["target"] as? [String: Any], let hash = target["hash"] as? String, isCommit(hash) else {
                throw WebhookRejection(status: 400, reason: "the repo:push payload's push.changes[].new has no name or target.hash")
            }
            return PushEvent(ref: (type == "tag" ? "refs/tags/" : "refs/heads/") + name, commit: hash, deleted: false, files: nil)
        }
        guard let old = change["old"] as? [String: Any], let name = old["name"] as? String else {
            throw WebhookRejection(status: 400, reason: "the repo:push payload's change has neither new nor old")
        }
        let type = (old["type"] as? String) ?? "branch"
        return PushEvent(ref: (type == "tag" ? "refs/tags/" : "refs/heads/") + name, commit: "", deleted: true, files: nil)
    }

    static func isCommit(_ text: String) -> Bool {
        (7...64).contains(text.utf8.count) && text.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }
}
