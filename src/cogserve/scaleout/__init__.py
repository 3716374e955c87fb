"""Scale-out on Ray Serve: one HTTP ingress (the whole cogserve app) in front of N model replicas.

    client -> Ray Serve proxy -> Ingress replica(s): create_app(..., scheduler=RemoteScheduler)
                                    | auth, limits, moderation, storage, jobs (shared DB + store)
                                    v  DeploymentHandle (power-of-two-choices on queue length)
                                 ModelReplica x N: engine + its own batching Scheduler

Ray is imported only here and only when ``cogserve serve --ray`` runs (the optional ``ray`` extra).
"""
