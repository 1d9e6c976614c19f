import Foundation
import GRDB
import SlipwayProtos
import SlipwayRPC
import Testing

@testable import SlipwayGateway

@Suite struct AuthenticationTests {
    static func store() throws -> GatewayStore {
        try GatewayStore(directory: FileManager.default.temporaryDirectory.appendingPathComponent("slipway-gw-\(UUID().uuidString)").path)
    }

    static func token(_ store: GatewayStore, organization: String = "org_a", project: String = "", role: Role = .viewer, rate: UInt32 = 0) throws -> String {
        let secret = Authenticator.newSecret()
        try store.insert(.init(
            id: secret.id, name: "t-\(secret.id)", secretHash: secret.hash, organizationID: organization, projectID: project, role: role.rawValue,
            rateLimit: rate, createdAt: 1, createdBy: "test"))
        return secret.text
    }

    @Test func tokensAreStoredHashedAndCheckedWhole() throws {
        let store = try Self.store()
        let auth = Authenticator(store: store, defaultRateLimit: 10, maxStreamsPerToken: 2)
        let text = try Self.token(store, role: .deployer)
        let principal = try auth.authenticate(bearer: "Bearer \(text)")
        #expect(principal.role == .deployer && principal.organizationID == "org_a")
        let id = String(text.split(separator: "_")[1])
        let stored = try #require(try store.token(id: id))
        #expect(!stored.secretHash.contains(String(text.split(separator: "_", maxSplits: 2)[2])))
        // A changed last character, another id, no token, garbage: all UNAUTHENTICATED.
        var wrong = text
        wrong.removeLast()
        wrong.append(text.last == "A" ? "B" : "A")
        for header in ["Bearer \(wrong)", "Bearer slw_000000000000_abc", nil, "Bearer x", "Basic dXNlcjpwYXNz"] as [String?] {
            let error = #expect(throws: RPCError.self) { try auth.authenticate(bearer: header) }
            #expect(error?.code == .unauthenticated, "\(header ?? "nil")")
        }
        _ = try store.revoke(id: id, at: 5)
        #expect((#expect(throws: RPCError.self) { try auth.authenticate(bearer: "Bearer \(text)") })?.message.contains("revoked") == true)
    }

    @Test func revokedTokensAreKeptAMonthAndAtMostAThousandPerOrganization() throws {
        let store = try Self.store()
        let day: Int64 = 24 * 3600 * 1000
        let old = String(try Self.token(store).split(separator: "_")[1])
        _ = try store.revoke(id: old, at: day)
        let valid = String(try Self.token(store).split(separator: "_")[1])
        // A month and a day later, the next revocation removes the old one; valid tokens stay.
        let recent = String(try Self.token(store).split(separator: "_")[1])
        _ = try store.revoke(id: recent, at: 32 * day)
        #expect(try store.token(id: old) == nil)
        #expect(try store.token(id: recent)?.revokedAt == 32 * day)
        #expect(try store.token(id: valid)?.revokedAt == 0)
        // Revoking in bulk keeps only the newest thousand revoked of the organization.
        for index in 0..<(GatewayStore.revokedKeptPerOrganization + 3) {
            let id = String(try Self.token(store).split(separator: "_")[1])
            _ = try store.revoke(id: id, at: 33 * day + Int64(index))
        }
        let revoked = try store.database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM token WHERE organization_id = 'org_a' AND revoked_at > 0")
        }
        #expect(revoked == GatewayStore.revokedKeptPerOrganization)
        #expect(try store.token(id: valid)?.revokedAt == 0)
    }

    @Test func scopesSeeOnlyTheirOrganizationAndProject() {
        let platform = Principal(tokenID: "p", name: "admin", organizationID: "", projectID: "", role: .admin, rateLimit: 1)
        let organization = Principal(tokenID: "o", name: "o", organizationID: "org_a", projectID: "", role: .admin, rateLimit: 1)
        let project = Principal(tokenID: "q", name: "q", organizationID: "org_a", projectID: "prj_1", role: .viewer, rateLimit: 1)
        #expect(platform.covers(organizationID: "org_b", projectID: "prj_9"))
        #expect(organization.covers(organizationID: "org_a", projectID: "prj_2"))
        #expect(!organization.covers(organizationID: "org_b"))
        #expect(project.covers(organizationID: "org_a", projectID: "prj_1"))
        #expect(!project.covers(organizationID: "org_a", projectID: "prj_2"))
        #expect(!project.covers(organizationID: "org_a"))
        #expect(throws: RPCError.self) { try project.require(.deployer, "Deploy") }
        #expect(throws: Never.self) { try organization.require(.deployer, "Deploy") }
    }

    @Test func theRateIsPerTokenWithBurstsOfTwiceTheRate() throws {
        let store = try Self.store()
        let auth = Authenticator(store: store, defaultRateLimit: 5, maxStreamsPerToken: 2)
        let slow = try auth.authenticate(token: try Self.token(store))
        let other = try auth.authenticate(token: try Self.token(store, rate: 100))
        let start = ContinuousClock.now
        for _ in 0..<10 { try auth.admit(slow, now: start) }
        let error = #expect(throws: RPCError.self) { try auth.admit(slow, now: start) }
        #expect(error?.code == .resourceExhausted && error?.message.contains("retry in 200 ms") == true)
        try auth.admit(other, now: start)  // another token's bucket is its own
        try auth.admit(slow, now: start + .milliseconds(200))  // one token back after 1/rate
        #expect(throws: RPCError.self) { try auth.admit(slow, now: start + .milliseconds(200)) }
    }

    @Test func openStreamsAreCountedPerToken() throws {
        let store = try Self.store()
        let auth = Authenticator(store: store, defaultRateLimit: 5, maxStreamsPerToken: 2)
        let principal = try auth.authenticate(token: try Self.token(store))
        let first = try auth.openStream(principal)
        let second = try auth.openStream(principal)
        #expect((#expect(throws: RPCError.self) { try auth.openStream(principal) })?.code == .resourceExhausted)
        first()
        first()  // given back once only
        let third = try auth.openStream(principal)
        #expect(throws: RPCError.self) { try auth.openStream(principal) }
        second()
        third()
    }

    @Test func openStreamsAreCountedPerOrganizationOverAllItsTokens() throws {
        let store = try Self.store()
        let auth = Authenticator(store: store, defaultRateLimit: 5, maxStreamsPerToken: 2, maxStreamsPerOrganization: 3)
        let a = try auth.authenticate(token: try Self.token(store, organization: "org_a"))
        let b = try auth.authenticate(token: try Self.token(store, organization: "org_a"))
        let other = try auth.authenticate(token: try Self.token(store, organization: "org_b"))
        let held = [try auth.openStream(a), try auth.openStream(a), try auth.openStream(b)]
        let refused = #expect(throws: RPCError.self) { try auth.openStream(b) }
        #expect(refused?.code == .resourceExhausted && refused?.message.contains("organization org_a") == true)
        // Another organization is not held up, and a closed stream frees a place.
        let theirs = try auth.openStream(other)
        held[0]()
        let again = try auth.openStream(b)
        for done in held + [theirs, again] { done() }
    }

    @Test func theAdminTokenFileIsReplacedWhenItNoLongerWorks() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-gw-\(UUID().uuidString)").path
        let store = try GatewayStore(directory: directory)
        let file = directory + "/admin-token"
        try Bootstrap.ensureAdminToken(store: store, file: file, logger: .init(label: "test"))
        let first = try String(contentsOfFile: file, encoding: .utf8)
        #expect((try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int) == 0o600)
        // The database holds webhook secrets: its directory (with the WAL files) is the owner's alone.
        #expect((try FileManager.default.attributesOfItem(atPath: directory)[.posixPermissions] as? Int) == 0o700)
        #expect((try FileManager.default.attributesOfItem(atPath: directory + "/gateway.sqlite")[.posixPermissions] as? Int) == 0o600)
        try Bootstrap.ensureAdminToken(store: store, file: file, logger: .init(label: "test"))
        #expect(try String(contentsOfFile: file, encoding: .utf8) == first, "a working token is kept")
        let auth = Authenticator(store: store, defaultRateLimit: 1, maxStreamsPerToken: 1)
        let principal = try auth.authenticate(bearer: "Bearer " + first.trimmingCharacters(in: .whitespacesAndNewlines))
        #expect(principal.isPlatform && principal.role == .admin)
        _ = try store.revoke(id: principal.tokenID, at: 1)
        try Bootstrap.ensureAdminToken(store: store, file: file, logger: .init(label: "test"))
        #expect(try String(contentsOfFile: file, encoding: .utf8) != first)
    }

    @Test func eventStreamQueriesMapToTheLogsCursors() throws {
        let one = try HTTPFrontend.logsRequest(["deployment_id": "dep_1", "contains": "GET", "min_level": "warn"], lastEventID: "41")
        #expect(one.start == .afterSeq(41) && one.filter?.contains == "GET" && one.filter?.minLevel == .warn)
        let merged = try HTTPFrontend.logsRequest(["environment_id": "env_1"], lastEventID: "1700000000000000000")
        #expect(merged.start == .sinceNanos(1_700_000_000_000_000_001))
        #expect(try HTTPFrontend.logsRequest(["service_id": "s", "live_only": "true"], lastEventID: nil).start == .liveOnly(true))
        #expect((#expect(throws: RPCError.self) { try HTTPFrontend.logsRequest(["service_id": "s", "after_seq": "-1"], lastEventID: nil) })?.code == .invalidArgument)
        #expect(throws: RPCError.self) { try HTTPFrontend.logsRequest(["service_id": "s", "min_level": "loud"], lastEventID: nil) }
    }
}

@Suite struct DeliveryRecordTests {
    static func record(_ store: GatewayStore, _ id: String, delivery: String, outcome: Slipway_Api_V1_DeliveryOutcome, service: String = "svc_1") throws -> GatewayStore.DeliveryRecord? {
        var record = GatewayStore.DeliveryRecord(id: id, serviceID: service, provider: 1, deliveryID: delivery, event: "push", receivedAt: 1, outcome: outcome.rawValue)
        record.ref = "refs/heads/main"
        record.commit = String(repeating: "a", count: 40)
        return try store.recordFirst(record)
    }

    @Test func aDeliveryIdCountsOnceAcceptedButNotWhenItWasRejected() throws {
        let store = try AuthenticationTests.store()
        #expect(try Self.record(store, "r1", delivery: "d1", outcome: .deliveryRejected) == nil)
        // Rejected (a wrong secret, since fixed): the host's redelivery is taken.
        #expect(try Self.record(store, "r2", delivery: "d1", outcome: .deliveryReceived) == nil)
        let earlier = try #require(try Self.record(store, "r3", delivery: "d1", outcome: .deliveryReceived))
        #expect(earlier.id == "r2")
        // Another service with the same delivery id (one push, two hooks) is its own.
        #expect(try Self.record(store, "r4", delivery: "d1", outcome: .deliveryReceived, service: "svc_2") == nil)
    }

    @Test func aReceivedDeliveryBehindADeployedOneIsSupersededNotResumed() throws {
        let store = try AuthenticationTests.store()
        _ = try Self.record(store, "old", delivery: "d1", outcome: .deliveryReceived)
        _ = try Self.record(store, "new", delivery: "d2", outcome: .deliveryReceived)
        try store.finish(deliveryID: "new", outcome: Slipway_Api_V1_DeliveryOutcome.deliveryDeployed.rawValue, reason: "", deploymentID: "dep", httpStatus: 202)
        _ = try Self.record(store, "other", delivery: "d3", outcome: .deliveryReceived, service: "svc_2")
        #expect(try store.unfinishedDeliveries().map(\.id) == ["other"])
        let old = try #require(try store.deliveries(serviceID: "svc_1", limit: 10).first { $0.id == "old" })
        #expect(old.outcome == Slipway_Api_V1_DeliveryOutcome.deliveryIgnored.rawValue && old.reason.contains("superseded"))
    }

    @Test func onlyTheNewestDeliveriesOfAServiceAreKept() throws {
        let store = try AuthenticationTests.store()
        for index in 0..<(GatewayStore.deliveriesKept + 5) {
            var record = GatewayStore.DeliveryRecord(id: "x\(index)", serviceID: "svc_1", provider: 1, deliveryID: "d\(index)", event: "push", receivedAt: 1, outcome: 4)
            record.httpStatus = 401
            try store.record(record)
        }
        let kept = try store.deliveries(serviceID: "svc_1", limit: 5000)
        #expect(kept.count == GatewayStore.deliveriesKept && kept.first?.id == "x\(GatewayStore.deliveriesKept + 4)")
    }

    @Test func unverifiedJunkNeverPushesOutTheRecordsThatDeduplicate() throws {
        let store = try AuthenticationTests.store()
        _ = try Self.record(store, "verified", delivery: "real-1", outcome: .deliveryReceived)
        try store.finish(deliveryID: "verified", outcome: Slipway_Api_V1_DeliveryOutcome.deliveryDeployed.rawValue, reason: "", deploymentID: "dep", httpStatus: 202)
        for index in 0..<(GatewayStore.deliveriesKept + 5) {
            var junk = GatewayStore.DeliveryRecord(id: "junk\(index)", serviceID: "svc_1", provider: 1, deliveryID: "j\(index)", event: "push", receivedAt: 1, outcome: 4)
            junk.httpStatus = 401
            try store.record(junk)
        }
        let kept = try store.deliveries(serviceID: "svc_1", limit: 5000)
        #expect(kept.contains { $0.id == "verified" })
        #expect(kept.filter { $0.outcome == 4 }.count == GatewayStore.deliveriesKept)
        // The host's retry of the verified delivery is still recognised.
        var retry = GatewayStore.DeliveryRecord(id: "retry", serviceID: "svc_1", provider: 1, deliveryID: "real-1", event: "push", receivedAt: 2, outcome: 1)
        retry.commit = "c0ffee"
        #expect(try store.recordFirst(retry)?.id == "verified")
    }
}
