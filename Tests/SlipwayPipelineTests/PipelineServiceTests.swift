import Foundation
import SlipwayProtos
import SlipwayRPC
import Testing

@testable import SlipwayPipeline

/// The pipeline service over RPC: stages, queue, actions, history, Watch and errors.
@Suite(.serialized) struct PipelineServiceTests {
    typealias API = Slipway_Pipeline_V1_Pipeline
    typealias Env = PipelineTestEnvironment

    @Test func stagesRunInOrderAndTheServicesOfAStageInParallelUpToTheLimit() async throws {
        var limits = PipelineEngine.Limits()
        limits.maxParallelServices = 2
        try await Env.with(limits: limits) { env in
            let (environment, ids) = try await env.makeEnvironment([
                .init(name: "db", stage: 0), .init(name: "cache", stage: 0), .init(name: "queue", stage: 0),
                .init(name: "api", stage: 1, isPublic: true),
            ])
            for name in ["cache", "db", "queue"] { env.fake.hold("deploy", name) }
            let accepted = try await env.deploy(environment)
            #expect(accepted.queuePosition == 0)
            // Two of stage 0 deploy at once; the third waits for a free slot; stage 1 waits for all.
            await env.fake.arrived("deploy", "*", count: 2)
            let started = env.fake.calls.filter { $0.kind == "deploy" }.map(\.service)
            #expect(started.count == 2)
            env.fake.open("deploy", started[0])
            await env.fake.arrived("deploy", "*", count: 3)
            #expect(!env.fake.calls.contains { $0.service == "api" })
            for name in ["cache", "db", "queue"] { env.fake.open("deploy", name) }
            let deployment = try await env.ended(environment, accepted.deploymentId)
            #expect(deployment.status == .deployed)
            #expect(env.fake.maxConcurrentDeployments == 2)
            let order = env.fake.calls.filter { $0.kind == "deploy" }.map(\.service)
            #expect(order.last == "api")
            #expect(try env.steps(deployment, ids["api"]!) == [
                "gitClone=stepSucceeded", "build=stepSucceeded", "deployment=stepSucceeded", "routerDeployment=stepSucceeded", "certificate=stepSucceeded",
            ])
            // A private service gets no route and no certificate: recorded as skipped.
            #expect(try env.steps(deployment, ids["db"]!).suffix(2) == ["routerDeployment=stepSkipped", "certificate=stepSkipped"])
            #expect(deployment.stages.map(\.stage) == [0, 1])
            #expect(deployment.stages.allSatisfy { $0.status == .deployed && $0.durationMillis >= 0 && $0.startedUnixMillis > 0 })
            let api = try env.service(deployment, ids["api"]!)
            #expect(api.commit.count == 40 && api.image.contains("@sha256:") && !api.releaseId.isEmpty)
            #expect(api.steps.allSatisfy { $0.startedUnixMillis >= deployment.startedUnixMillis })
        }
    }

    @Test func aFailureStopsLaterStagesAndSaysWhy() async throws {
        try await Env.with { env in
            let (environment, ids) = try await env.makeEnvironment([.init(name: "db", stage: 0), .init(name: "api", stage: 1), .init(name: "web", stage: 2)])
            env.fake.fail("deploy", "db", "readiness probe failed: connection refused")
            let deployment = try await env.ended(environment, try await env.deploy(environment).deploymentId)
            #expect(deployment.status == .deploymentError)
            let db = try env.service(deployment, ids["db"]!)
            #expect(db.status == .deploymentError)
            #expect(db.reason == "DEPLOYMENT failed: readiness probe failed: connection refused")
            #expect(db.steps.last?.status == .stepFailed && db.steps.last?.message == "readiness probe failed: connection refused")
            for name in ["api", "web"] {
                let skipped = try env.service(deployment, ids[name]!)
                #expect(skipped.status == .skipped)
                #expect(skipped.reason == "not run: stage 0 failed (db)")
                #expect(skipped.steps.isEmpty)
            }
            #expect(!env.fake.calls.contains { $0.service != "db" })
            // A failed build is BUILD_ERROR.
            env.fake.fail("build", "api", "RUN make: exit status 2")
            let second = try await env.ended(environment, try await env.deploy(environment, services: [ids["api"]!]).deploymentId)
            #expect(try env.service(second, ids["api"]!).status == .buildError)
            #expect(try env.steps(second, ids["api"]!) == ["gitClone=stepSucceeded", "build=stepFailed"])
        }
    }

    @Test func stopAndDeleteRunStagesInReverseOrder() async throws {
        try await Env.with { env in
            let (environment, ids) = try await env.makeEnvironment([.init(name: "db", stage: 0), .init(name: "api", stage: 1, isPublic: true)])
            _ = try await env.ended(environment, try await env.deploy(environment).deploymentId)
            let stop = try await env.ended(environment, try await env.action(API.Stop.path, environment).deploymentId)
            #expect(stop.status == .stopped)
            #expect(stop.stages.map(\.stage) == [1, 0])
            #expect(env.fake.calls.filter { $0.kind == "stop" }.map(\.service) == ["api", "db"])
            var status = Slipway_Pipeline_V1_GetEnvironmentStatusRequest()
            status.environmentId = environment
            #expect(try await env.client.unary(API.GetEnvironmentStatus.self, status).runningStatus == .runningStopped)

            _ = try await env.ended(environment, try await env.action(API.Restart.path, environment).deploymentId)
            #expect(env.fake.calls.filter { $0.kind == "restart" }.count == 2)
            #expect(try await env.client.unary(API.GetEnvironmentStatus.self, status).runningStatus == .runningRunning)

            let delete = try await env.ended(environment, try await env.action(API.Delete.path, environment, services: [ids["api"]!]).deploymentId)
            #expect(delete.status == .deleted)
            #expect(try env.steps(delete, ids["api"]!) == ["deployment=stepSucceeded", "routerDeployment=stepSucceeded"])
            #expect(env.fake.calls.contains { $0.kind == "unroute" && $0.service == "api" })
            // Gone from the environment, its name free again, its history kept.
            var list = Slipway_Pipeline_V1_ListServicesRequest()
            list.environmentId = environment
            #expect(try await env.client.unary(API.ListServices.self, list).services.map(\.name) == ["db"])
            _ = try await env.createService(environment, .init(name: "api"))
            var history = Slipway_Pipeline_V1_ListDeploymentsRequest()
            history.environmentId = environment
            history.serviceId = ids["api"]!
            let touched = try await env.client.unary(API.ListDeployments.self, history).deployments
            #expect(touched.map(\.action) == [.delete, .restart, .stop, .deploy])
            #expect(try env.service(touched[0], ids["api"]!).serviceName == "api")
        }
    }

    @Test func oneActionPerEnvironmentLaterOnesQueueAndANewerDeploySupersedesAQueuedOne() async throws {
        try await Env.with { env in
            let (environment, ids) = try await env.makeEnvironment([.init(name: "api"), .init(name: "worker")])
            let (other, _) = try await env.makeEnvironment([.init(name: "api")])
            env.fake.hold("clone", "api")
            let first = try await env.deploy(environment, services: [ids["api"]!])
            await env.fake.arrived("clone", "api")
            // Another environment is not held up.
            let elsewhere = try await env.deploy(other)
            #expect(elsewhere.queuePosition == 0)
            #expect(try await env.ended(other, elsewhere.deploymentId).status == .deployed)

            let second = try await env.deploy(environment, versions: [:])
            #expect(second.queuePosition == 1)
            let third = try await env.deploy(environment, services: [ids["api"]!], versions: [ids["api"]!: "v2.0.0"])
            #expect(third.queuePosition == 2)
            #expect(third.supersededDeploymentIds == [second.deploymentId])
            let superseded = try await env.deployment(second.deploymentId)
            #expect(try env.service(superseded, ids["api"]!).status == .skipped)
            #expect(try env.service(superseded, ids["api"]!).reason == "superseded by deployment \(third.deploymentId)")
            #expect(try env.service(superseded, ids["worker"]!).status == .queued)

            var status = Slipway_Pipeline_V1_GetEnvironmentStatusRequest()
            status.environmentId = environment
            let queue = try await env.client.unary(API.GetEnvironmentStatus.self, status)
            #expect(queue.runningDeploymentId == first.deploymentId)
            #expect(queue.queuedDeploymentIds == [second.deploymentId, third.deploymentId])

            env.fake.open("clone", "api")
            #expect(try await env.ended(environment, third.deploymentId).status == .deployed)
            #expect(try await env.deployment(first.deploymentId).status == .deployed)
            #expect(try await env.deployment(second.deploymentId).status == .deployed)
            // The queued deploy of api never built: only the first and the third did.
            #expect(env.fake.calls.filter { $0.kind == "clone" && $0.service == "api" }.map(\.detail).suffix(2) == ["", "v2.0.0"])
            #expect(env.fake.calls.filter { $0.kind == "clone" && $0.service == "api" }.count == 3)  // incl. the other environment's
            // Executions never overlapped in the environment.
            let deployments = [first, second, third].map(\.deploymentId)
            var spans: [(Int64, Int64)] = []
            for id in deployments {
                let deployment = try await env.deployment(id)
                spans.append((deployment.startedUnixMillis, deployment.endedUnixMillis))
            }
            #expect(spans[0].1 <= spans[1].0 && spans[1].1 <= spans[2].0)
        }
    }

    @Test func aDeployWaitingBehindADeleteOfItsServiceDoesNotBringItBack() async throws {
        try await Env.with { env in
            let (environment, ids) = try await env.makeEnvironment([.init(name: "api", isPublic: true)])
            let api = ids["api"]!
            _ = try await env.ended(environment, try await env.deploy(environment).deploymentId)
            env.fake.hold("delete", "api")
            let delete = try await env.action(API.Delete.path, environment)
            await env.fake.arrived("delete", "api")
            let deploy = try await env.deploy(environment, services: [api])
            #expect(deploy.queuePosition == 1)
            env.fake.open("delete", "api")
            #expect(try await env.ended(environment, delete.deploymentId).status == .deleted)
            let skipped = try env.service(try await env.ended(environment, deploy.deploymentId), api)
            #expect(skipped.status == .skipped)
            #expect(skipped.reason == "not run: the service was deleted by an earlier deployment")
            #expect(env.fake.calls.filter { $0.kind == "deploy" }.count == 1)
        }
    }

    @Test func aServiceKeepsItsStatusWhenADeploymentThatNeverRanIsCanceled() async throws {
        try await Env.with { env in
            let (environment, ids) = try await env.makeEnvironment([.init(name: "api"), .init(name: "web")])
            _ = try await env.ended(environment, try await env.deploy(environment).deploymentId)
            env.fake.hold("clone", "web")
            let running = try await env.deploy(environment, services: [ids["web"]!])
            let waiting = try await env.deploy(environment, services: [ids["api"]!])
            _ = try await env.cancel(waiting.deploymentId)
            env.fake.open("clone", "web")
            _ = try await env.ended(environment, running.deploymentId)
            var get = Slipway_Pipeline_V1_GetServiceRequest()
            get.serviceId = ids["api"]!
            #expect(try await env.client.unary(API.GetService.self, get).deploymentStatus == .deployed)
        }
    }

    @Test func aRetriedRequestWithTheSameIdempotencyKeyDeploysOnce() async throws {
        try await Env.with { env in
            let (environment, _) = try await env.makeEnvironment([.init(name: "api")])
            let first = try await env.deploy(environment, key: "github-delivery-72d3")
            let retry = try await env.deploy(environment, key: "github-delivery-72d3")
            #expect(retry.duplicate && retry.deploymentId == first.deploymentId)
            _ = try await env.ended(environment, first.deploymentId)
            let late = try await env.deploy(environment, key: "github-delivery-72d3")
            #expect(late.duplicate && late.deploymentId == first.deploymentId)
            #expect(env.fake.calls.filter { $0.kind == "deploy" }.count == 1)
        }
    }

    @Test func cancelEndsAQueuedDeploymentAtOnceAndStopsARunningBuild() async throws {
        try await Env.with { env in
            let (environment, ids) = try await env.makeEnvironment([.init(name: "api"), .init(name: "web", stage: 1)])
            env.fake.hold("build", "api")
            let running = try await env.deploy(environment)
            let waiting = try await env.deploy(environment, services: [ids["web"]!])
            await env.fake.arrived("build", "api")

            let canceledWaiting = try await env.cancel(waiting.deploymentId)
            #expect(canceledWaiting.status == .canceled && canceledWaiting.endedUnixMillis > 0)
            #expect(try env.service(canceledWaiting, ids["web"]!).reason == "canceled before it started")

            let canceling = try await env.cancel(running.deploymentId)
            #expect(try env.service(canceling, ids["web"]!).status == .canceled)
            let ended = try await env.ended(environment, running.deploymentId)
            #expect(ended.status == .canceled)
            #expect(try env.steps(ended, ids["api"]!) == ["gitClone=stepSucceeded", "build=stepCanceled"])
            // Nothing was deployed, so nothing was rolled back.
            #expect(!env.fake.calls.contains { $0.kind == "deploy" || $0.kind == "rollback" })

            var request = Slipway_Pipeline_V1_CancelRequest()
            request.deploymentId = running.deploymentId
            let error = await #expect(throws: RPCError.self) { try await env.client.unary(API.Cancel.self, request) }
            #expect(error?.code == .failedPrecondition)
            #expect(error?.message.contains("already ended") == true)
        }
    }

    @Test func cancelDuringTheRolloutRollsTheServiceBackToItsPreviousRelease() async throws {
        try await Env.with { env in
            let (environment, ids) = try await env.makeEnvironment([.init(name: "api", isPublic: true), .init(name: "web")])
            let first = try await env.ended(environment, try await env.deploy(environment).deploymentId)
            let previousImage = try env.service(first, ids["api"]!).image
            env.fake.hold("deploy", "api")
            env.fake.hold("deploy", "web")
            let second = try await env.deploy(environment, versions: [ids["api"]!: String(repeating: "b", count: 40)])
            await env.fake.arrived("deploy", "api", count: 2)
            await env.fake.arrived("deploy", "web", count: 2)
            env.fake.open("deploy", "web")
            // web finishes; api is canceled mid-rollout.
            _ = try await waitFor(env, environment, second.deploymentId) { try env.service($0, ids["web"]!).status == .deployed }
            _ = try await env.cancel(second.deploymentId)
            let ended = try await env.ended(environment, second.deploymentId)
            #expect(try env.service(ended, ids["api"]!).status == .canceled)
            #expect(try env.service(ended, ids["web"]!).status == .deployed)
            #expect(env.fake.calls.filter { $0.kind == "rollback" } == [.init(kind: "rollback", service: "api", detail: previousImage)])
            #expect(try env.steps(ended, ids["api"]!).last == "deployment=stepCanceled")
        }
    }

    @Test func rollbackDeploysAnEarlierReleaseWithItsConfigurationAndRedeployKeepsTheVersion() async throws {
        try await Env.with { env in
            let (environment, ids) = try await env.makeEnvironment([.init(name: "api", variables: ["MODE": "one"])])
            let api = ids["api"]!
            let v1 = String(repeating: "1", count: 40)
            let first = try await env.ended(environment, try await env.deploy(environment, versions: [api: v1]).deploymentId)
            // Change the configuration and deploy another commit.
            var update = Slipway_Pipeline_V1_UpdateServiceRequest()
            update.serviceId = api
            update.config = Env.config(.init(name: "api", variables: ["MODE": "two"]))
            _ = try await env.client.unary(API.UpdateService.self, update)
            let v2 = String(repeating: "2", count: 40)
            _ = try await env.ended(environment, try await env.deploy(environment, versions: [api: v2]).deploymentId)

            var releases = Slipway_Pipeline_V1_ListReleasesRequest()
            releases.serviceId = api
            let listed = try await env.client.unary(API.ListReleases.self, releases).releases
            #expect(listed.map(\.commit) == [v2, v1])
            #expect(listed[1].config?.environmentVariables == ["MODE": "one"])

            var rollback = Slipway_Pipeline_V1_RollbackRequest()
            rollback.serviceId = api
            rollback.releaseId = try env.service(first, api).releaseId
            let rolledBack = try await env.ended(environment, try await env.client.unary(API.Rollback.self, rollback).deploymentId)
            #expect(rolledBack.status == .deployed)
            #expect(rolledBack.rollbackReleaseId == rollback.releaseId)
            // No build: the release's image and configuration go straight to the cluster.
            #expect(try env.steps(rolledBack, api).first == "deployment=stepSucceeded")
            #expect(env.fake.calls.last { $0.kind == "deploy" }?.detail == "\(try env.service(first, api).image) MODE=one")
            var get = Slipway_Pipeline_V1_GetServiceRequest()
            get.serviceId = api
            #expect(try await env.client.unary(API.GetService.self, get).config?.environmentVariables == ["MODE": "one"])
            #expect(try await env.client.unary(API.GetService.self, get).secretNames == ["API_TOKEN"])

            // Redeploy: what runs now (the rolled-back commit), with the current configuration.
            let redeploy = try await env.ended(environment, try await env.action(API.Redeploy.path, environment).deploymentId)
            #expect(try env.service(redeploy, api).requestedVersion == v1)
            #expect(env.fake.calls.last { $0.kind == "clone" }?.detail == v1)

            // A release of another service is refused.
            let (_, others) = try await env.makeEnvironment([.init(name: "other")])
            rollback.serviceId = others["other"]!
            let error = await #expect(throws: RPCError.self) { try await env.client.unary(API.Rollback.self, rollback) }
            #expect(error?.code == .invalidArgument)
        }
    }

    @Test func aStuckStepTimesOutWithAReason() async throws {
        var limits = PipelineEngine.Limits()
        limits.stepTimeout = .milliseconds(300)
        try await Env.with(limits: limits) { env in
            let (environment, ids) = try await env.makeEnvironment([.init(name: "api")])
            env.fake.hold("deploy", "api")
            let deployment = try await env.ended(environment, try await env.deploy(environment).deploymentId)
            let api = try env.service(deployment, ids["api"]!)
            #expect(api.status == .deploymentError)
            #expect(api.reason == "DEPLOYMENT failed: did not finish within 300 ms (the step timed out)")
        }
    }

    @Test func watchSendsASnapshotThenEveryChangeWithTheEnvironmentRollup() async throws {
        try await Env.with { env in
            let (environment, ids) = try await env.makeEnvironment([.init(name: "api", isPublic: true)])
            var request = Slipway_Pipeline_V1_WatchRequest()
            request.environmentId = environment
            env.fake.hold("clone", "api")
            let events: [Slipway_Pipeline_V1_StatusEvent] = try await env.client.serverStreaming(API.Watch.self, request) { stream in
                var seen: [Slipway_Pipeline_V1_StatusEvent] = []
                for try await event in stream {
                    seen.append(event)
                    if event.kind == .eventSnapshotEnd {
                        let accepted = try await env.deploy(environment)
                        await env.fake.arrived("clone", "api")
                        env.fake.open("clone", "api")
                        _ = accepted
                    }
                    if event.kind == .eventDeploymentEnded { return seen }
                }
                return seen
            }
            #expect(events.first?.kind == .eventSnapshot && events.first?.serviceId == ids["api"]!)
            #expect(events.first?.deploymentStatus == .deploymentStatusUnspecified)
            let statuses = events.filter { $0.kind == .eventDeploymentStatus }.map(\.deploymentStatus)
            #expect(statuses == [.queued, .building, .deploying, .deployed])
            let steps = events.filter { $0.kind == .eventStep }.map { "\($0.step)=\($0.stepStatus)" }
            #expect(steps.first == "gitClone=stepRunning" && steps.last == "certificate=stepSucceeded")
            #expect(steps.count == 10)
            #expect(events.last?.environmentDeploymentStatus == .deployed)
            #expect(events.last?.environmentRunningStatus == .runningRunning)
            #expect(events.contains { $0.kind == .eventRunningStatus && $0.runningStatus == .runningRunning })
            // Watching a deployment of another environment is refused.
            let (other, _) = try await env.makeEnvironment([.init(name: "x")])
            request.environmentId = other
            request.deploymentId = try #require(events.first { !$0.deploymentId.isEmpty && $0.kind == .eventDeploymentEnded }).deploymentId
            let error = await #expect(throws: RPCError.self) {
                try await env.client.serverStreaming(API.Watch.self, request) { stream in for try await _ in stream {} }
            }
            #expect(error?.code == .invalidArgument)
        }
    }

    @Test func historyIsPagedFilterableAndTheDeploymentLogReachesTheLogsService() async throws {
        try await Env.with { env in
            let (environment, ids) = try await env.makeEnvironment([.init(name: "api", isPublic: true)])
            var deployed: [String] = []
            for _ in 0..<3 { deployed.append(try await env.ended(environment, try await env.deploy(environment).deploymentId).id) }
            let restart = try await env.ended(environment, try await env.action(API.Restart.path, environment).deploymentId).id
            var request = Slipway_Pipeline_V1_ListDeploymentsRequest()
            request.environmentId = environment
            request.pageSize = 3
            let page1 = try await env.client.unary(API.ListDeployments.self, request)
            #expect(page1.deployments.map(\.id) == [restart, deployed[2], deployed[1]])
            #expect(!page1.nextPageToken.isEmpty)
            request.pageToken = page1.nextPageToken
            let page2 = try await env.client.unary(API.ListDeployments.self, request)
            #expect(page2.deployments.map(\.id) == [deployed[0]])
            #expect(page2.nextPageToken.isEmpty)
            request.pageToken = ""
            request.action = .restart
            #expect(try await env.client.unary(API.ListDeployments.self, request).deployments.map(\.id) == [restart])
            let first = page2.deployments[0]
            #expect(first.triggeredBy == "alice" && first.origin == .cli && first.action == .deploy)
            #expect(try env.service(first, ids["api"]!).steps.allSatisfy { $0.durationMillis >= 0 && $0.status == .stepSucceeded })

            let lines = try await env.logLines(environment, deployed[0]).map(\.text)
            #expect(lines.first == "DEPLOY of api requested by alice (CLI)")
            #expect(lines.contains("stage 0: api"))
            #expect(lines.contains("api: GIT_CLONE started"))
            #expect(lines.contains { $0.hasPrefix("api: CERTIFICATE succeeded in ") })
            #expect(lines.last?.hasPrefix("deployment ended: DEPLOYED in ") == true)
            #expect(!lines.joined().contains("secret-api"))
        }
    }

    @Test func badRequestsGetAStatusThatSaysWhatToFix() async throws {
        var limits = PipelineEngine.Limits()
        limits.maxQueuedPerEnvironment = 1
        try await Env.with(limits: limits) { env in
            let (environment, ids) = try await env.makeEnvironment([.init(name: "api")])
            func code(_ body: () async throws -> Void) async -> (RPCStatusCode?, String) {
                do {
                    try await body()
                    return (nil, "")
                } catch let error as RPCError {
                    return (error.code, error.message)
                } catch {
                    return (.unknown, "\(error)")
                }
            }
            var create = Slipway_Pipeline_V1_CreateServiceRequest()
            create.environmentId = environment
            create.name = "Bad_Name"
            create.config = Env.config(.init(name: "x"))
            var result = await code { _ = try await env.client.unary(API.CreateService.self, create) }
            #expect(result.0 == .invalidArgument && result.1.contains("DNS label"))
            create.name = "api"
            result = await code { _ = try await env.client.unary(API.CreateService.self, create) }
            #expect(result.0 == .alreadyExists)
            create.name = "noport"
            create.config?.ports[0].internalPort = 70000
            result = await code { _ = try await env.client.unary(API.CreateService.self, create) }
            #expect(result.0 == .invalidArgument && result.1.contains("config.ports[0].internal_port"))
            create.config = Slipway_Pipeline_V1_ServiceConfig()
            result = await code { _ = try await env.client.unary(API.CreateService.self, create) }
            #expect(result.0 == .invalidArgument && result.1.contains("source"))
            create.environmentId = "env_missing"
            create.config = Env.config(.init(name: "x"))
            result = await code { _ = try await env.client.unary(API.CreateService.self, create) }
            #expect(result.0 == .notFound && result.1.contains("env_missing"))

            result = await code { _ = try await env.deploy(environment, services: ["svc_missing"]) }
            #expect(result.0 == .notFound && result.1.contains("svc_missing"))
            result = await code { _ = try await env.deploy("") }
            #expect(result.0 == .invalidArgument && result.1.contains("environment_id"))
            result = await code { _ = try await env.deploy(environment, key: String(repeating: "k", count: 513)) }
            #expect(result.0 == .invalidArgument && result.1.contains("idempotency_key"))

            // The queue limit: one running, one waiting, the next refused.
            env.fake.hold("clone", "api")
            let running = try await env.deploy(environment)
            let waitingWithKey = try await env.deploy(environment, services: [ids["api"]!], key: "webhook-7")
            result = await code { _ = try await env.deploy(environment) }
            #expect(result.0 == .resourceExhausted && result.1.contains("limit 1"))
            // A retry of the accepted request is answered even though the queue is full now.
            let retry = try await env.deploy(environment, services: [ids["api"]!], key: "webhook-7")
            #expect(retry.duplicate && retry.deploymentId == waitingWithKey.deploymentId)
            env.fake.open("clone", "api")
            _ = try await env.ended(environment, running.deploymentId)

            var history = Slipway_Pipeline_V1_ListDeploymentsRequest()
            history.environmentId = environment
            history.pageToken = "dep_unknown"
            result = await code { _ = try await env.client.unary(API.ListDeployments.self, history) }
            #expect(result.0 == .invalidArgument && result.1.contains("page_token"))
            // The service is still up and answering.
            var list = Slipway_Pipeline_V1_ListServicesRequest()
            list.environmentId = environment
            #expect(try await env.client.unary(API.ListServices.self, list).services.count == 1)
        }
    }

    /// Waits, through Watch, until `condition` holds for the deployment.
    func waitFor(
        _ env: Env, _ environment: String, _ deploymentID: String, _ condition: @escaping @Sendable (Slipway_Pipeline_V1_Deployment) throws -> Bool
    ) async throws -> Slipway_Pipeline_V1_Deployment {
        var request = Slipway_Pipeline_V1_WatchRequest()
        request.environmentId = environment
        request.deploymentId = deploymentID
        return try await env.client.serverStreaming(API.Watch.self, request, options: CallOptions(timeout: .seconds(60))) { events in
            for try await event in events where event.kind != .eventSnapshot {
                let deployment = try await env.deployment(deploymentID)
                if try condition(deployment) { return deployment }
            }
            throw TestError("the watch ended before the condition held")
        }
    }
}

struct TestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
