package store

import (
	"fmt"
	"strings"
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
// the same package twice is found by one Get.
func (s *Store) UpdateIdentityKey(identity string) string {
	return s.prefix + "update-identities/" + identity
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

// ElectionPrefix is where scheduler replicas campaign.
func (s *Store) ElectionPrefix() string { return s.prefix + "election/" }

// IDFromKey returns the last segment of a key.
func IDFromKey(key string) string {
	return key[strings.LastIndexByte(key, '/')+1:]
}

// Key functions added by other packages' needs go below.

// ActiveRunsPrefix holds the active-run key of every image in servicing.
func (s *Store) ActiveRunsPrefix() string { return s.prefix + "active-runs/" }

// LogBaseKey holds the number of log lines a run had when its current attempt
// was leased: agents number each attempt's lines from 1, and the server stores
// them after the earlier attempts' lines.
func (s *Store) LogBaseKey(runID string) string { return s.prefix + "log-bases/" + runID }
