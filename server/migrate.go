package server

import (
	"context"
	"fmt"
	"strconv"

	"github.com/hashicorp/go-hclog"

	"github.com/osvc/osvc/server/catalog"
	"github.com/osvc/osvc/server/servicing"
	"github.com/osvc/osvc/server/store"
)

// schemaVersion is the version of the stored data this server writes:
//
//	1  the first release
//	2  index keys: update targets (architecture, build), runs by image,
//	   ended runs by end time
const schemaVersion = 2

// migrate brings data stored by an older server up to schemaVersion before
// anything serves. Each step is idempotent, so replicas starting together,
// or a server killed half way, are harmless.
func migrate(ctx context.Context, st *store.Store, cat *catalog.Catalog, svc *servicing.Service, logger hclog.Logger) error {
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
	updates, err := cat.Reindex(ctx)
	if err != nil {
		return err
	}
	runs, err := svc.Reindex(ctx)
	if err != nil {
		return err
	}
	if _, err := st.Client().Put(ctx, st.SchemaKey(), strconv.Itoa(schemaVersion)); err != nil {
		return fmt.Errorf("record the schema version: %w", err)
	}
	logger.Info("stored data migrated", "from_schema", version, "to_schema", schemaVersion, "updates", updates, "runs", runs)
	return nil
}
