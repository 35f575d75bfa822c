package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	osvcv1 "github.com/osvc/osvc/gen/osvc/v1"
	"github.com/osvc/osvc/pkg/pki"
)

func (c *cli) access() (osvcv1.AccessServiceClient, error) {
	conn, err := c.dial()
	if err != nil {
		return nil, err
	}
	return osvcv1.NewAccessServiceClient(conn), nil
}

// roleNames are the roles as users write them.
var roleNames = map[string]osvcv1.Role{
	"admin": osvcv1.Role_ROLE_ADMIN, "operator": osvcv1.Role_ROLE_OPERATOR, "viewer": osvcv1.Role_ROLE_VIEWER,
}

func roleText(r osvcv1.Role) string { return strings.ToLower(enumText(r.String(), "ROLE_")) }

func (c *cli) tokenCommand() *cobra.Command {
	cmd := groupCommand("token", "Manage the tokens people and services call osvc with")
	var (
		role, description string
		sites             []string
		ttl               time.Duration
	)
	create := &cobra.Command{
		Use:   "create --role admin|operator|viewer [--site CODE]... [--ttl DURATION] [--description TEXT]",
		Short: "Make a token; its secret is printed once, on stdout",
		Long: `Make a bearer token bound to a role: admin (everything), operator of the
listed sites (import, schedule and cancel for those sites' images; import
updates; read everything) or viewer (read only). The secret goes to stdout
alone, so it can be redirected to a file; the server keeps only its hash.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			r, ok := roleNames[role]
			if !ok {
				return usageErrorf("--role %q: want admin, operator or viewer", role)
			}
			client, err := c.access()
			if err != nil {
				return err
			}
			req := &osvcv1.CreateTokenRequest{Role: r, Sites: sites, Description: description}
			if ttl > 0 {
				req.Ttl = durationpb.New(ttl)
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := client.CreateToken(ctx, req)
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			fmt.Fprintln(c.stdout, resp.GetSecret())
			fmt.Fprintf(c.stderr, "token %s (%s%s) created; its secret above is shown only now: give it with --token-file FILE or $%s\n",
				resp.GetToken().GetId(), roleText(resp.GetToken().GetRole()), sitesText(resp.GetToken().GetSites()), tokenEnv)
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", "", "admin, operator or viewer")
	create.Flags().StringSliceVar(&sites, "site", nil, "a site an operator operates, e.g. PS1; repeat or separate with commas")
	create.Flags().DurationVar(&ttl, "ttl", 0, "how long the token is valid, e.g. 720h; default: until revoked")
	create.Flags().StringVar(&description, "description", "", "what the token is for, shown by token list")

	list := &cobra.Command{
		Use:   "list",
		Short: "List the tokens (never their secrets)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := c.access()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := client.ListTokens(ctx, &osvcv1.ListTokensRequest{})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			t := newTable(c.stdout, "ID", "ROLE", "SITES", "DESCRIPTION", "CREATED", "EXPIRES", "CREATED BY")
			for _, tok := range resp.GetTokens() {
				t.AppendRow([]any{tok.GetId(), roleText(tok.GetRole()), orDash(strings.Join(tok.GetSites(), ",")), orDash(tok.GetDescription()),
					timeText(tok.GetCreateTime()), timeText(tok.GetExpireTime()), orDash(tok.GetCreatedBy())})
			}
			renderList(c.stdout, t, "no tokens")
			return nil
		},
	}
	revoke := c.revokeCommand("Revoke a token: calls carrying it are refused at once", "token",
		func(ctx context.Context, conn *grpc.ClientConn, id string) error {
			_, err := osvcv1.NewAccessServiceClient(conn).RevokeToken(ctx, &osvcv1.RevokeTokenRequest{Id: id})
			return err
		})
	cmd.AddCommand(create, list, revoke)
	return cmd
}

// revokeCommand is a "revoke ID" command: revoke makes the call, what
// names the thing revoked in the confirmation.
func (c *cli) revokeCommand(short, what string, revoke func(ctx context.Context, conn *grpc.ClientConn, id string) error) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: short,
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			conn, err := c.dial()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			if err := revoke(ctx, conn, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "%s %s revoked\n", what, args[0])
			return nil
		},
	}
}

func sitesText(sites []string) string {
	if len(sites) == 0 {
		return ""
	}
	return " of " + strings.Join(sites, ",")
}

// agentAccessCommands are the agent subcommands of enrollment and revocation.
func (c *cli) agentAccessCommands() []*cobra.Command {
	var (
		site string
		ttl  time.Duration
		uses int32
	)
	tokenCmd := groupCommand("token", "Make join tokens agents enroll with")
	create := &cobra.Command{
		Use:   "create --site CODE [--ttl 1h] [--uses 1]",
		Short: "Make a join token for a site; printed alone on stdout",
		Long: `Make a join token: an agent started with it (osvc-agent --join-token-file
FILE, or $OSVC_JOIN_TOKEN) enrolls once and gets its certificate, naming it
and the site. The token works --uses times within --ttl.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			if site == "" {
				return usageErrorf("--site is required: the site the agent services, e.g. PS1")
			}
			agents, err := c.agents()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := agents.CreateJoinToken(ctx, &osvcv1.CreateJoinTokenRequest{Site: site, Ttl: durationpb.New(ttl), Uses: uses})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			fmt.Fprintln(c.stdout, resp.GetToken())
			fmt.Fprintf(c.stderr, "join token %s for site %s, %d use(s), until %s: start the agent with --join-token-file FILE holding it\n",
				resp.GetId(), site, max(uses, 1), timeText(resp.GetExpireTime()))
			return nil
		},
	}
	create.Flags().StringVar(&site, "site", "", "the site the agents enrolled with it belong to, e.g. PS1")
	create.Flags().DurationVar(&ttl, "ttl", time.Hour, "how long the token may be used")
	create.Flags().Int32Var(&uses, "uses", 1, "how many agents may enroll with it")
	list := &cobra.Command{
		Use:   "list",
		Short: "List the join tokens still usable (never their secrets)",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			agents, err := c.agents()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := agents.ListJoinTokens(ctx, &osvcv1.ListJoinTokensRequest{})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			t := newTable(c.stdout, "ID", "SITE", "USES LEFT", "EXPIRES", "CREATED", "CREATED BY")
			for _, jt := range resp.GetJoinTokens() {
				t.AppendRow([]any{jt.GetId(), jt.GetSite(), jt.GetUsesLeft(), timeText(jt.GetExpireTime()), timeText(jt.GetCreateTime()), orDash(jt.GetCreatedBy())})
			}
			renderList(c.stdout, t, "no join tokens")
			return nil
		},
	}
	revokeJoin := c.revokeCommand("Revoke a join token: no agent enrolls with it any more", "join token",
		func(ctx context.Context, conn *grpc.ClientConn, id string) error {
			_, err := osvcv1.NewAgentServiceClient(conn).RevokeJoinToken(ctx, &osvcv1.RevokeJoinTokenRequest{Id: id})
			return err
		})
	tokenCmd.AddCommand(create, list, revokeJoin)

	var reason string
	revoke := &cobra.Command{
		Use:   "revoke NAME [--reason TEXT]",
		Short: "Revoke an agent: its certificate is refused and its stream ends at once",
		Args:  exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			agents, err := c.agents()
			if err != nil {
				return err
			}
			name := strings.TrimPrefix(args[0], "agents/")
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			if _, err := agents.RevokeAgent(ctx, &osvcv1.RevokeAgentRequest{Name: name, Reason: reason}); err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "agent %s revoked; it may enroll again with a new join token\n", name)
			return nil
		},
	}
	revoke.Flags().StringVar(&reason, "reason", "", "why, for the audit")
	return []*cobra.Command{tokenCmd, revoke}
}

func (c *cli) auditCommand() *cobra.Command {
	cmd := groupCommand("audit", "Read the audit trail of changes and refusals")
	var (
		since string
		who   string
		limit int
	)
	list := &cobra.Command{
		Use:   "list [--since 24h|TIME] [--who PRINCIPAL] [--limit N]",
		Short: "List audit events, newest first",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &osvcv1.ListAuditEventsRequest{Principal: who}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return usageErrorf("--since %q: %w", since, err)
				}
				req.Since = timestamppb.New(t)
			}
			if limit <= 0 {
				return usageErrorf("--limit %d: want 1 or more", limit)
			}
			client, err := c.access()
			if err != nil {
				return err
			}
			all := &osvcv1.ListAuditEventsResponse{}
			for len(all.Events) < limit {
				req.PageSize = int32(min(limit-len(all.Events), listPageSize))
				ctx, cancel := c.callContext(cmd.Context())
				resp, err := client.ListAuditEvents(ctx, req)
				cancel()
				if err != nil {
					return err
				}
				all.Events = append(all.Events, resp.GetEvents()...)
				if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
					break
				}
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, all)
			}
			t := newTable(c.stdout, "TIME", "WHO", "ROLE", "METHOD", "RESOURCE", "RESULT", "PEER")
			for _, ev := range all.GetEvents() {
				result := ev.GetCode()
				if ev.GetMessage() != "" {
					result += ": " + ev.GetMessage()
				}
				if ev.GetReason() != "" {
					result += " (reason: " + ev.GetReason() + ")"
				}
				t.AppendRow([]any{timeText(ev.GetTime()), ev.GetPrincipal(), orDash(roleText(ev.GetRole())),
					strings.TrimPrefix(ev.GetMethod(), "/osvc.v1."), orDash(ev.GetResource()), result, orDash(ev.GetPeer())})
			}
			renderList(c.stdout, t, "no audit events")
			return nil
		},
	}
	list.Flags().StringVar(&since, "since", "", "only events since a duration ago (24h) or a time (2026-12-01T00:00:00Z)")
	list.Flags().StringVar(&who, "who", "", "only the events of a principal, e.g. token:0123456789abcdef or agent:PS1/name")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many events")
	cmd.AddCommand(list)
	return cmd
}

// parseSince reads a duration ago or an RFC 3339 time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("want a positive duration")
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("want a duration such as 24h or a time such as 2026-12-01T00:00:00Z")
	}
	return t, nil
}

func (c *cli) whoamiCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "whoami",
		Short: "Show who the server takes this osvcctl for",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, err := c.access()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := client.WhoAmI(ctx, &osvcv1.WhoAmIRequest{})
			if err != nil {
				return err
			}
			if c.output == outputJSON {
				return printJSON(c.stdout, resp)
			}
			fmt.Fprintf(c.stdout, "%s (%s%s) on %s\n", resp.GetPrincipal(), roleText(resp.GetRole()), sitesText(resp.GetSites()), c.server)
			return nil
		},
	}
}

func (c *cli) loginCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "login [--server HOST:PORT] [--ca-file FILE] [--token-file FILE]",
		Short: "Check a token against the server and save it (0600) for later commands",
		Long: `Save the server, its authority and a token in osvcctl's configuration
(` + "$" + configEnv + `, else osvc/osvcctl.json in your configuration folder),
readable by you only, after checking them with the server. The token comes
from --token-file, $` + tokenEnv + `, or is read from the terminal.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			token := ""
			if c.tokenFile != "" {
				t, err := readTokenFile(c.tokenFile)
				if err != nil {
					return usageErrorf("--token-file: %w", err)
				}
				token = t
			} else if t := strings.TrimSpace(c.getenv(tokenEnv)); t != "" {
				token = t
			} else {
				t, err := readSecret(c.stderr, "Token: ")
				if err != nil {
					return err
				}
				token = t
			}
			if token == "" {
				return usageErrorf("no token: give --token-file FILE, $%s, or type it", tokenEnv)
			}
			c.login = &loginConfig{Server: c.server, Token: token}
			c.tokenFile = ""
			client, err := c.access()
			if err != nil {
				return err
			}
			ctx, cancel := c.callContext(cmd.Context())
			defer cancel()
			resp, err := client.WhoAmI(ctx, &osvcv1.WhoAmIRequest{})
			if err != nil {
				return err
			}
			path, err := c.saveConfig(&loginConfig{Server: c.server, CAFile: c.caFile, Token: token})
			if err != nil {
				return fmt.Errorf("save the login: %w", err)
			}
			fmt.Fprintf(c.stdout, "logged in to %s as %s (%s%s); saved in %s\n", c.server, resp.GetPrincipal(), roleText(resp.GetRole()), sitesText(resp.GetSites()), path)
			return nil
		},
	}
}

func (c *cli) logoutCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "logout",
		Short: "Forget the token osvcctl login saved",
		Args:  exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := c.configPath()
			if path == "" {
				return nil
			}
			if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
				return err
			}
			fmt.Fprintf(c.stdout, "logged out (%s removed)\n", path)
			return nil
		},
	}
}

// readSecret reads one line from the terminal without echo, or from stdin
// when it is not a terminal.
func readSecret(prompt io.Writer, label string) (string, error) {
	if term.IsTerminal(int(os.Stdin.Fd())) {
		fmt.Fprint(prompt, label)
		b, err := term.ReadPassword(int(os.Stdin.Fd()))
		fmt.Fprintln(prompt)
		return strings.TrimSpace(string(b)), err
	}
	line, err := bufio.NewReader(io.LimitReader(os.Stdin, pki.MaxSecretFileBytes)).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	return strings.TrimSpace(line), nil
}
