package store

import (
	"fmt"
	"strings"
	"time"
)

// Every etcd key of osvc is built here, never by concatenation at call sites.

// ImageKey is <prefix>images/<id>.
func (s *Store) ImageKey(id string) string { return s.ImagesPrefix() + id }

// ImagesPrefix holds every image.
func (s *Store) ImagesPrefix() string { return s.prefix + "images/" }

// ScheduleKey is <prefix>schedules/<imageID>/<scheduleID>.
func (s *Store) ScheduleKey(imageID, scheduleID string) string {
	return s.SchedulesPrefix(imageID) + scheduleID
}

// SchedulesPrefix holds the schedules of one image; with imageID "" every schedule.
func (s *Store) SchedulesPrefix(imageID string) string {
	if imageID == "" {
		return s.prefix + "schedules/"
	}
	return s.prefix + "schedules/" + imageID + "/"
}

// UpdateKey is <prefix>updates/<id>.
func (s *Store) UpdateKey(id string) string { return s.UpdatesPrefix() + id }

// UpdatesPrefix holds every update.
func (s *Store) UpdatesPrefix() string { return s.prefix + "updates/" }

// UpdateIdentityKey indexes a package identity to its update id, so importing
// the same package twice is found by one Get. Windows compares identities
// without regard to case, and so does the index.
func (s *Store) UpdateIdentityKey(identity string) string {
	return s.prefix + "update-identities/" + strings.ToLower(identity)
}

// RunKey is <prefix>runs/<id>.
func (s *Store) RunKey(id string) string { return s.RunsPrefix() + id }

// RunsPrefix holds every run.
func (s *Store) RunsPrefix() string { return s.prefix + "runs/" }

// ActiveRunKey holds the id of the image's run in progress: one run at a time per image.
func (s *Store) ActiveRunKey(imageID string) string { return s.prefix + "active-runs/" + imageID }

// AssignmentKey is <prefix>assignments/<runID>, bound to the agent's lease.
func (s *Store) AssignmentKey(runID string) string { return s.AssignmentsPrefix() + runID }

// AssignmentsPrefix holds every assignment.
func (s *Store) AssignmentsPrefix() string { return s.prefix + "assignments/" }

// AgentKey is <prefix>agents/<name>.
func (s *Store) AgentKey(name string) string { return s.AgentsPrefix() + name }

// AgentsPrefix holds every registered agent.
func (s *Store) AgentsPrefix() string { return s.prefix + "agents/" }

// PresenceKey is <prefix>presence/<agent>, bound to the agent's lease while connected.
func (s *Store) PresenceKey(agent string) string { return s.PresencePrefix() + agent }

// PresencePrefix holds the presence of every connected agent.
func (s *Store) PresencePrefix() string { return s.prefix + "presence/" }

// LogKey is <prefix>logs/<runID>/<firstSeq zero-padded>, so keys sort by sequence.
func (s *Store) LogKey(runID string, firstSeq int64) string {
	return fmt.Sprintf("%s%020d", s.LogsPrefix(runID), firstSeq)
}

// LogsPrefix holds the log batches of one run.
func (s *Store) LogsPrefix(runID string) string { return s.prefix + "logs/" + runID + "/" }

// ContentKey is <prefix>contents/<sha256>.
func (s *Store) ContentKey(sha256 string) string { return s.ContentsPrefix() + sha256 }

// ContentsPrefix holds every content record.
func (s *Store) ContentsPrefix() string { return s.prefix + "contents/" }

// ContentLockPrefix is where replicas sharing the content library's blobs
// lock one blob while they put it in place or remove it.
func (s *Store) ContentLockPrefix(sha256 string) string {
	return s.prefix + "content-locks/" + sha256 + "/"
}

// ChunkLockPrefix is where replicas sharing the content library's chunks
// lock one chunk while a write reuses or stores it, or the collector
// removes it.
func (s *Store) ChunkLockPrefix(sha256 string) string {
	return s.prefix + "chunk-locks/" + sha256 + "/"
}

// ElectionPrefix is where scheduler replicas campaign.
func (s *Store) ElectionPrefix() string { return s.prefix + "election/" }

// CollectorElectionPrefix is where replicas campaign to run the content
// collector; not under ElectionPrefix, whose candidates are every key below it.
func (s *Store) CollectorElectionPrefix() string { return s.prefix + "collector-election/" }

// MetricsElectionPrefix is where replicas campaign to follow the runs for
// the run metrics.
func (s *Store) MetricsElectionPrefix() string { return s.prefix + "metrics-election/" }

// IDFromKey returns the last segment of a key.
func IDFromKey(key string) string {
	return key[strings.LastIndexByte(key, '/')+1:]
}

// Key functions added by other packages' needs go below.

// ActiveRunsPrefix holds the active-run key of every image in servicing.
func (s *Store) ActiveRunsPrefix() string { return s.prefix + "active-runs/" }

// ActiveInspectionKey holds the id of the image's inspection run in
// progress: one inspection at a time per image, beside its servicing run.
func (s *Store) ActiveInspectionKey(imageID string) string {
	return s.ActiveInspectionsPrefix() + imageID
}

// ActiveInspectionsPrefix holds the active-inspection key of every image.
func (s *Store) ActiveInspectionsPrefix() string { return s.prefix + "active-inspections/" }

// LogBaseKey held the number of log lines a run had when its current attempt
// was leased, written by the lease of servers before LogCountKey; still read
// for an attempt such a server leased, and deleted when the run ends.
func (s *Store) LogBaseKey(runID string) string { return s.prefix + "log-bases/" + runID }

// LogCountKey holds the log line count of a run that has not ended, with the
// base of its current attempt, so that storing lines never rewrites the run.
func (s *Store) LogCountKey(runID string) string { return s.prefix + "log-counts/" + runID }

// Index keys: each names one thing a list reads by it, so lists that would
// otherwise scan every run or update read only the keys that concern them.

// ImageRunKey indexes a run under its image: <prefix>image-runs/<imageID>/<runID>.
// Run ids sort by creation time, so the index lists an image's runs in order.
func (s *Store) ImageRunKey(imageID, runID string) string { return s.ImageRunsPrefix(imageID) + runID }

// ImageRunsPrefix holds the run index of one image.
func (s *Store) ImageRunsPrefix(imageID string) string {
	return s.prefix + "image-runs/" + imageID + "/"
}

// UpdateTargetKey indexes an update under an architecture and an OS build it
// applies to: <prefix>update-targets/<arch>/<build>/<updateID>, build being
// ten zero-padded digits, or "any" for an update that names no build.
func (s *Store) UpdateTargetKey(arch string, build uint32, anyBuild bool, updateID string) string {
	return s.UpdateTargetsPrefix(arch, build, anyBuild) + updateID
}

// UpdateTargetsPrefix holds the updates of one architecture and build (or of
// any build).
func (s *Store) UpdateTargetsPrefix(arch string, build uint32, anyBuild bool) string {
	b := "any"
	if !anyBuild {
		b = fmt.Sprintf("%010d", build)
	}
	return s.prefix + "update-targets/" + arch + "/" + b + "/"
}

// EndedRunKey indexes an ended run by its end time:
// <prefix>ended-runs/<unix nanoseconds, 20 digits>/<runID>, so a range up to
// a cutoff finds the runs that ended before it.
func (s *Store) EndedRunKey(end time.Time, runID string) string {
	return fmt.Sprintf("%s%020d/%s", s.EndedRunsPrefix(), max(end.UnixNano(), 0), runID)
}

// EndedRunsPrefix holds the ended-run index.
func (s *Store) EndedRunsPrefix() string { return s.prefix + "ended-runs/" }

// SchemaKey records which indexes the stored data has (see store.Migrate).
func (s *Store) SchemaKey() string { return s.prefix + "schema" }

// SiteKey is <prefix>sites/<code>.
func (s *Store) SiteKey(code string) string { return s.SitesPrefix() + code }

// SitesPrefix holds every site.
func (s *Store) SitesPrefix() string { return s.prefix + "sites/" }

// SiteReferencesKey changes with every write that makes something name the
// site, so a delete of the site can tell one happened since it looked.
func (s *Store) SiteReferencesKey(code string) string { return s.prefix + "site-references/" + code }

// JoinTokenKey is <prefix>join-tokens/<id>.
func (s *Store) JoinTokenKey(id string) string { return s.JoinTokensPrefix() + id }

// JoinTokensPrefix holds every join token.
func (s *Store) JoinTokensPrefix() string { return s.prefix + "join-tokens/" }

// AgentIdentityKey is <prefix>agent-identities/<name>: an enrolled agent.
func (s *Store) AgentIdentityKey(name string) string { return s.AgentIdentitiesPrefix() + name }

// AgentIdentitiesPrefix holds every enrolled agent's identity.
func (s *Store) AgentIdentitiesPrefix() string { return s.prefix + "agent-identities/" }

// AuthorityKey holds the certificate authority the replicas share.
func (s *Store) AuthorityKey() string { return s.prefix + "pki/authority" }

// ReplicasPrefix holds a key per live server replica, on an etcd lease of
// the replica's.
func (s *Store) ReplicasPrefix() string { return s.prefix + "replicas/" }

// ReplicaKey is replica id's liveness key.
func (s *Store) ReplicaKey(id string) string { return s.ReplicasPrefix() + id }

// DistributionKey is <prefix>distributions/<agent>/<imageID>: where one
// distribution point stands with one image. Keyed by agent first, so what an
// agent is to fetch and may read is one short range.
func (s *Store) DistributionKey(agent, imageID string) string {
	return s.DistributionsPrefix(agent) + imageID
}

// DistributionsPrefix holds the distributions of one distribution point;
// with agent "" every distribution.
func (s *Store) DistributionsPrefix(agent string) string {
	if agent == "" {
		return s.prefix + "distributions/"
	}
	return s.prefix + "distributions/" + agent + "/"
}

// DistributionPointKey is <prefix>distribution-points/<agent>: an agent that
// asked for the distribution point role itself, valued with its site.
func (s *Store) DistributionPointKey(agent string) string {
	return s.DistributionPointsPrefix() + agent
}

// DistributionPointsPrefix holds every agent that asked for the role.
func (s *Store) DistributionPointsPrefix() string { return s.prefix + "distribution-points/" }

// DistributionElectionPrefix is where replicas campaign to run the
// distribution reconciler.
func (s *Store) DistributionElectionPrefix() string { return s.prefix + "distribution-election/" }
