// Package agent is the capture agent's HTTP API, `sendense serve`
// (docs/api.md): JSON endpoints for health, VM discovery and backup jobs,
// a queue that honours [performance] max_concurrent_backups and
// backup_window, bearer-token authentication, a job history kept in a
// bbolt file across restarts, and Prometheus metrics.
//
// Backups run through orchestrator.Backup with the services the CLI builds
// (the caller passes them in Options.Connect), so `sendense backup` and the
// API share one code path. One file per concern:
//
//	server.go     Server, Options, Serve and the graceful shutdown
//	listen.go     the listener: loopback unless TLS is configured
//	auth.go       the bearer token
//	http.go       JSON responses, errors {error, detail}, request decoding, routing
//	health.go     GET /api/v1/health
//	vms.go        GET /api/v1/vms[/{vm_path}/specs|disks|cbt-status]
//	jobs_api.go   /api/v1/backup endpoints
//	jobs.go       the job record, its states and its progress reporter
//	scheduler.go  the queue: concurrency, backup window, one job per VM
//	window.go     backup_window ("22:00-06:00")
//	store.go      the job history (bbolt)
//	recover.go    jobs interrupted by a restart: failed, snapshots removed
//	vcenter.go    the shared vCenter session and its cached live check
//	metrics.go    /metrics in the Prometheus text format
package agent
