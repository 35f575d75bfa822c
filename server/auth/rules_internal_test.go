package auth

import (
	"context"
	"errors"
	"testing"

	"github.com/hashicorp/go-hclog"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/errdefs"
)

func TestAMethodWithoutARuleIsRefusedBeforeAnyCredentialIsLookedAt(t *testing.T) {
	t.Parallel()
	z := NewAuthorizer(nil, nil, nil, hclog.NewNullLogger())
	z.rules = map[string]Rule{}
	for name := range Rules {
		if name != osvcv1.ImageService_GetImage_FullMethodName {
			z.rules[name] = Rules[name]
		}
	}
	// No Access: a method without a rule must fail closed before it is needed.
	_, err := z.admit(context.Background(), osvcv1.ImageService_GetImage_FullMethodName)
	if !errors.Is(err, errdefs.ErrPermissionDenied) {
		t.Errorf("a method without a rule: %v, want PermissionDenied", err)
	}
}
