package catalog

import "context"

// EnterImport takes one of the catalog's import slots, as an import in
// progress holds it, so a test can fill them.
func (c *Catalog) EnterImport(ctx context.Context) (release func(), err error) {
	return c.imports.Enter(ctx)
}
