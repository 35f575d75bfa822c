package distribution

import (
	"context"
	"sync"
)

// manifestsKept bounds the manifests kept in memory: a few images'
// current and next versions.
const manifestsKept = 16

// manifests keeps the file sets of the package trees read lately: a
// point reads every file of a tree, and each read is authorized against
// the tree's manifest. A manifest is content: what a sha256 names never
// changes, so a set kept is never stale.
type manifests struct {
	mu    sync.Mutex
	sets  map[string]map[string]bool
	order []string // oldest first
}

func (m *manifests) files(ctx context.Context, trees Trees, sha256 string) (map[string]bool, error) {
	m.mu.Lock()
	set, ok := m.sets[sha256]
	m.mu.Unlock()
	if ok {
		return set, nil
	}
	tree, err := trees.ReadTree(ctx, sha256)
	if err != nil {
		return nil, err
	}
	set = make(map[string]bool, len(tree.GetFiles()))
	for _, f := range tree.GetFiles() {
		set[f.GetSha256()] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sets == nil {
		m.sets = map[string]map[string]bool{}
	}
	if _, ok := m.sets[sha256]; !ok {
		m.sets[sha256] = set
		m.order = append(m.order, sha256)
		if len(m.order) > manifestsKept {
			delete(m.sets, m.order[0])
			m.order = m.order[1:]
		}
	}
	return set, nil
}
