import Foundation
import Logging
import SlipwayProtos
import SlipwayRPC

/// Turns git hosts' push deliveries into deployments, and records every delivery with what it did.
///
/// A delivery is written down (RECEIVED) before the deployment is asked for; the deployment's
/// idempotency key is the delivery, so a gateway killed in between asks again on restart
/// (``resume()``) and never deploys twice. The same delivery id again is answered from the record.
final class WebhookReceiver: Sendable {
    typealias Pipeline = Slipway_Pipeline_V1_Pipeline
    typealias Outcome = Slipway_Api_V1_DeliveryOutcome

    let store: GatewayStore
    let pipeline: Slipway_Pipeline_V1_Pipeline.Client
    let publicURL: String
    let maxBodyBytes: Int
    let logger: Logger

    init(store: GatewayStore, pipeline: RPCClient, publicURL: String, maxBodyBytes: Int, logger: Logger) {
        self.store = store
        self.pipeline = .init(wrapping: pipeline)
        self.publicURL = publicURL
        self.maxBodyBytes = maxBodyBytes
        self.logger = logger
    }

    /// Path of a service's webhook on the gateway.
    static func path(serviceID: String) -> String { "/webhooks/\(serviceID)" }

    func create(serviceID: String) throws -> Slipway_Api_V1_Webhook {
        let secret = randomHex(24)
        let now = nowMillis()
        try store.setWebhook(serviceID: serviceID, secret: secret, at: now)
        var webhook = Slipway_Api_V1_Webhook()
        webhook.serviceId = serviceID
        webhook.url = publicURL + Self.path(serviceID: serviceID)
        webhook.secret = secret
        webhook.createdUnixMillis = now
        return webhook
    }

    /// The answer to a delivery: HTTP status and a JSON body saying what happened.
    struct Answer: Sendable, Equatable {
        var status: Int
        var outcome: Outcome
        var reason: String
        var deploymentID: String = ""
        var deliveryRecordID: String = ""

        var json: [String: Any] {
            var object: [String: Any] = ["outcome": outcome.protoName, "reason": reason]
            if !deploymentID.isEmpty { object["deployment_id"] = deploymentID }
            if !deliveryRecordID.isEmpty { object["delivery"] = deliveryRecordID }
            return object
        }
    }

    /// A payload over the limit: refused before it is read whole (not recorded: nothing in it was verified).
    func tooLarge(serviceID: String) -> Answer {
        Answer(status: 413, outcome: .deliveryRejected, reason: "the payload is larger than the limit of \(maxBodyBytes) bytes (--gateway-max-webhook-bytes)")
    }

    /// `throttled`: the source sent too many refused deliveries (the reason); one more that fails
    /// verification is answered 429 and not written down.
    func receive(serviceID: String, _ request: WebhookRequest, throttled: String? = nil) async -> Answer {
        let now = nowMillis()
        let id = "dlv-" + randomHex(8)
        let stored: String?
        do {
            stored = serviceID.utf8.count <= 128 ? try store.webhookSecret(serviceID: serviceID) : nil
        } catch {
            return Answer(status: 503, outcome: .deliveryRejected, reason: "cannot read the webhook's secret (\(error)); the git host will retry")
        }
        guard let secret = stored else {
            return Answer(status: 404, outcome: .deliveryRejected, reason: "no webhook for service \(serviceID.prefix(128)): create one with slipway webhook create")
        }
        func reject(_ rejection: WebhookRejection, _ delivery: WebhookDelivery?) -> Answer {
            if let throttled { return Answer(status: 429, outcome: .deliveryRejected, reason: "\(rejection.reason); \(throttled)") }
            var record = GatewayStore.DeliveryRecord(
                id: id, serviceID: serviceID, provider: delivery?.provider.rawValue ?? 0, deliveryID: delivery?.deliveryID ?? "",
                event: delivery?.event ?? "", receivedAt: now, outcome: Outcome.deliveryRejected.rawValue)
            record.reason = rejection.reason
            record.httpStatus = rejection.status
            try? store.record(record)
            logger.notice("webhook rejected", metadata: ["service": "\(serviceID)", "reason": "\(rejection.reason)"])
            return Answer(status: rejection.status, outcome: .deliveryRejected, reason: rejection.reason, deliveryRecordID: id)
        }
        if request.body.count > maxBodyBytes { return tooLarge(serviceID: serviceID) }
        let delivery: WebhookDelivery
        do {
            delivery = try WebhookParser.identify(request)
        } catch {
            return Answer(status: throttled == nil ? error.status : 429, outcome: .deliveryRejected, reason: error.reason + (throttled.map { "; " + $0 } ?? ""))
        }
        do { try WebhookParser.verify(request, delivery, secret: secret) } catch { return reject(error, delivery) }
        var record = GatewayStore.DeliveryRecord(
            id: id, serviceID: serviceID, provider: delivery.provider.rawValue, deliveryID: delivery.deliveryID, event: delivery.event,
            receivedAt: now, outcome: Outcome.deliveryReceived.rawValue)
        var push: PushEvent?
        if delivery.isPush {
            do { push = try WebhookParser.push(delivery, body: request.body) } catch { return reject(error, delivery) }
            record.ref = push!.ref
            record.commit = push!.commit
            record.files = push!.files
        }
        do {
            if let earlier = try store.recordFirst(record) {
                if earlier.outcome == Outcome.deliveryReceived.rawValue {
                    // The host's redelivery of one the gateway could not finish: finish it now.
                    return await process(earlier)
                }
                var duplicate = record
                duplicate.outcome = Outcome.deliveryDuplicate.rawValue
                duplicate.reason = "delivery \(delivery.deliveryID) was received before (\(earlier.id): \(Outcome(rawValue: earlier.outcome).protoName)); nothing done again"
                duplicate.deploymentID = earlier.deploymentID
                duplicate.httpStatus = 200
                try store.record(duplicate)
                return Answer(status: 200, outcome: .deliveryDuplicate, reason: duplicate.reason, deploymentID: earlier.deploymentID, deliveryRecordID: id)
            }
        } catch {
            return Answer(status: 503, outcome: .deliveryRejected, reason: "cannot record the delivery: \(error); the git host will retry")
        }
        return await process(record)
    }

    /// Decides and deploys a recorded delivery, then records the outcome.
    func process(_ record: GatewayStore.DeliveryRecord) async -> Answer {
        var answer: Answer
        do {
            answer = try await decide(record)
        } catch let error as RPCError where [RPCStatusCode.unavailable, .deadlineExceeded, .internal, .unknown].contains(error.code) {
            // Left RECEIVED, and on the disk: the gateway asks again until the pipeline answers
            // (``ResumeDeliveries``), so the push is accepted now and not lost.
            logger.warning("webhook delivery waits for the pipeline", metadata: ["delivery": "\(record.id)", "error": "\(error)"])
            return Answer(
                status: 202, outcome: .deliveryReceived,
                reason: "recorded; the pipeline is not answering (\(error.message)): the gateway deploys it once it does", deliveryRecordID: record.id)
        } catch let error as RPCError {
            answer = Answer(status: 422, outcome: .deliveryRejected, reason: "the deployment was refused: \(error.message)")
        } catch {
            answer = Answer(status: 500, outcome: .deliveryRejected, reason: "\(error)")
        }
        answer.deliveryRecordID = record.id
        do {
            try store.finish(deliveryID: record.id, outcome: answer.outcome.rawValue, reason: answer.reason, deploymentID: answer.deploymentID, httpStatus: answer.status)
        } catch {
            logger.error("cannot record a delivery's outcome", metadata: ["delivery": "\(record.id)", "error": "\(error)"])
        }
        logger.info("webhook delivery", metadata: ["delivery": "\(record.id)", "outcome": "\(answer.outcome.protoName)", "reason": "\(answer.reason)"])
        return answer
    }

    private func decide(_ record: GatewayStore.DeliveryRecord) async throws -> Answer {
        func ignored(_ reason: String) -> Answer { Answer(status: 200, outcome: .deliveryIgnored, reason: reason) }
        guard !record.ref.isEmpty || !record.commit.isEmpty else { return ignored("event \"\(record.event)\" is not a push") }
        guard !record.commit.isEmpty else { return ignored("\(record.ref) was deleted") }
        guard record.ref.hasPrefix("refs/heads/") else { return ignored("\(record.ref) is not a branch") }
        let branch = String(record.ref.dropFirst("refs/heads/".count))
        var get = Slipway_Pipeline_V1_GetServiceRequest()
        get.serviceId = record.serviceID
        let service: Slipway_Pipeline_V1_Service
        do {
            service = try await pipeline.getService(get)
        } catch let error as RPCError where error.code == .notFound {
            return ignored("service \(record.serviceID) does not exist")
        }
        let config = service.config ?? .init()
        guard case .application(let git)? = config.source else { return ignored("service \(service.name) is not built from git") }
        guard config.autoDeploy?.enabled ?? false else { return ignored("auto-deploy is off for service \(service.name)") }
        let branches = (config.autoDeploy?.branches ?? []).isEmpty ? [git.branch.isEmpty ? "main" : git.branch] : config.autoDeploy!.branches
        guard branches.contains(branch) else {
            return ignored("branch \(branch) is not deployed (auto-deploy branches: \(branches.joined(separator: ", ")))")
        }
        let paths = config.autoDeploy?.paths ?? []
        var note = ""
        if !paths.isEmpty {
            if let files = record.files {
                let touched = files.contains { file in paths.contains { prefix in file == prefix || file.hasPrefix(prefix.hasSuffix("/") ? prefix : prefix + "/") } }
                guard touched else { return ignored("no changed file under \(paths.joined(separator: ", ")) (changed: \(files.prefix(10).joined(separator: ", ")))") }
            } else {
                note = " (the payload does not list changed files, so the path filter was not applied)"
            }
        }
        let stopped: [Slipway_Pipeline_V1_DeploymentStatus] = [.stopQueued, .stopping, .stopped, .deleteQueued, .deleting, .deleted]
        guard !stopped.contains(service.deploymentStatus) else {
            return ignored("service \(service.name) is \(service.deploymentStatus.protoName); a push does not start it again (deploy it to resume)")
        }
        // A signed body re-posted under a new delivery id must not bring an old commit back: a
        // commit already deployed, or one an older release ran, is not deployed by a push.
        if let earlier = try store.deployedDelivery(serviceID: record.serviceID, commit: record.commit, except: record.id) {
            return ignored(
                "commit \(record.commit.prefix(12)) was deployed before by delivery \(earlier.id) (a replayed delivery?); deploy it by hand to run it again")
        }
        // Two indexed reads of one release each: one built from this commit, and the newest.
        var releasesRequest = Slipway_Pipeline_V1_ListReleasesRequest()
        releasesRequest.serviceId = service.id
        releasesRequest.pageSize = 1
        releasesRequest.commit = record.commit
        if let earlier = try await pipeline.listReleases(releasesRequest).releases.first {
            releasesRequest.commit = ""
            let newest = try await pipeline.listReleases(releasesRequest).releases.first ?? earlier
            return ignored(
                newest.id == earlier.id || newest.commit == record.commit
                    ? "commit \(record.commit.prefix(12)) is what service \(service.name) runs (release \(newest.id)); nothing to deploy"
                    : "commit \(record.commit.prefix(12)) ran in an earlier release (\(earlier.id)) than the deployed \(newest.commit.prefix(12)); a push never brings an earlier release back: roll back or deploy it by hand")
        }
        var deploy = Slipway_Pipeline_V1_DeployRequest()
        deploy.environmentId = service.environmentId
        deploy.serviceIds = [service.id]
        deploy.versions = [service.id: record.commit]
        var trigger = Slipway_Pipeline_V1_Trigger()
        trigger.origin = .git
        trigger.triggeredBy = "webhook:\(record.id)"
        trigger.idempotencyKey = "webhook:\(record.serviceID):\(record.provider):\(record.deliveryID)"
        deploy.trigger = trigger
        let accepted = try await pipeline.deploy(deploy)
        return Answer(
            status: 202, outcome: .deliveryDeployed,
            reason: "deploying \(record.commit.prefix(12)) of \(branch)\(accepted.duplicate ? " (already requested)" : "")\(note)",
            deploymentID: accepted.deploymentId)
    }

    /// Deliveries recorded but not finished (the gateway stopped, or the pipeline could not be
    /// reached): asked for again.
    func resume() async {
        guard (try? store.hasUnfinishedDeliveries()) != false, let pending = try? store.unfinishedDeliveries(), !pending.isEmpty else { return }
        logger.info("resuming webhook deliveries", metadata: ["count": "\(pending.count)"])
        for record in pending { _ = await process(record) }
    }

    static func message(_ record: GatewayStore.DeliveryRecord) -> Slipway_Api_V1_Delivery {
        var delivery = Slipway_Api_V1_Delivery()
        delivery.id = record.id
        delivery.serviceId = record.serviceID
        delivery.provider = GitProvider(rawValue: record.provider)
        delivery.deliveryId = record.deliveryID
        delivery.event = record.event
        delivery.ref = record.ref
        delivery.commit = record.commit
        delivery.receivedUnixMillis = record.receivedAt
        delivery.outcome = Outcome(rawValue: record.outcome)
        delivery.reason = record.reason
        delivery.deploymentId = record.deploymentID
        delivery.httpStatus = UInt32(clamping: record.httpStatus)
        return delivery
    }
}
