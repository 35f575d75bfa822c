package server

import (
	"context"
	"fmt"
	"strconv"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/sites"
	"github.com/osvc/osvc/server/store"
)

// schemaVersion is the version of the stored data this server writes:
//
//	1  the first release
//	2  index keys: update targets (architecture, build), runs by image,
//	   ended runs by end time
//	3  sites are records (sites/{code}) that images, agents and join
//	   tokens must name
const schemaVersion = 3

// migrate brings data stored by an older server up to schemaVersion before
// anything serves. Each step is idempotent, so replicas starting together,
// or a server killed half way, are harmless.
func migrate(ctx context.Context, st *store.Store, cat *catalog.Catalog, svc *servicing.Service, reg *sites.Registry, logger hclog.Logger) error {
	resp, err := st.Client().Get(ctx, st.SchemaKey())
	if err != nil {
		return fmt.Errorf("read the schema version: %w", err)
	}
	version := 1
	if len(resp.Kvs) > 0 {
		if version, err = strconv.Atoi(string(resp.Kvs[0].Value)); err != nil {
			return fmt.Errorf("schema version %q is not a number: %w", resp.Kvs[0].Value, err)
		}
	}
	if version > schemaVersion {
		return fmt.Errorf("the stored data is of schema %d, newer than this server's %d: run a newer osvc-server", version, schemaVersion)
	}
	if version == schemaVersion {
		return nil
	}
	if version < 2 {
		updates, err := cat.Reindex(ctx)
		if err != nil {
			return err
		}
		runs, err := svc.Reindex(ctx)
		if err != nil {
			return err
		}
		logger.Info("stored data indexed", "updates", updates, "runs", runs)
	}
	if version < 3 {
		created, err := reg.RecordNamed(ctx)
		if err != nil {
			return err
		}
		logger.Info("sites recorded from the images and agents that name them", "sites", created)
	}
	if _, err := st.Client().Put(ctx, st.SchemaKey(), strconv.Itoa(schemaVersion)); err != nil {
		return fmt.Errorf("record the schema version: %w", err)
	}
	logger.Info("stored data migrated", "from_schema", version, "to_schema", schemaVersion)
	return nil
}
