defmodule DSPyBridge.Signatures do
  @moduledoc false
  # Named signatures (`register_signature` and co.): `DSPyBridge` delegates here.
  alias DSPyBridge.Options
  import DSPyBridge.Calls
  import DSPyBridge.Args, only: [normalize: 1]

  use DSPyBridge.ApiDocs

  @api_doc {:register_signature,
            """
            Registers a signature under `name`, for programs created with
            `signature: %{ref: name}` (see `create_program/3`). `signature` is a
            signature string (`"question -> answer"`) or the structured form, a map
            or keyword list with `:inputs` and `:outputs` (lists of `%{name: ...,
            type: ..., desc: ...}`) and optionally `:name` and `:instructions`.

            Without `session:` it is a worker-level signature, registered on every
            worker and seen by every session; with `session:` it is that session's
            own, shadowing a worker-level one of the same name there. Registering a
            name again replaces it; programs already made from it keep the
            signature they were made from. Recorded for replay: a restarted worker
            gets its signatures back before its programs.

                DSPyBridge.register_signature(pool, "BasicQA", "question -> answer")
                DSPyBridge.create_program(pool, %{signature: %{ref: "BasicQA"}}, session: "s1")

            Returns `{:ok, %{"name" => ..., "scope" => "worker" | "session",
            "signature" => ..., "registered_at" => ..., "replaced" => boolean}}`.
            """}
  def register_signature(pool, name, signature, opts \\ []) do
    opts = Options.validate!(opts, :call)
    name = to_string(name)
    signature = if is_binary(signature), do: signature, else: normalize(signature)

    mutate(pool, "register_signature", %{"name" => name, "signature" => signature}, opts, fn
      session, args -> {:put_signature, session, name, args}
    end)
  end

  @api_doc {:get_signature,
            """
            Describes the signature named `name`: the session's own, else the
            worker-level one (`:not_found` if neither). Returns the same shape as
            `register_signature/4` without `"replaced"` (string keys).
            """}
  def get_signature(pool, name, opts \\ []),
    do: read(pool, "get_signature", %{"name" => to_string(name)}, Options.validate!(opts, :call))

  @api_doc {:list_signatures,
            """
            Lists the named signatures a session sees: `{:ok, %{"session_id" => ...,
            "signatures" => [...]}}`, the worker-level ones with the session's own in
            their place.
            """}
  def list_signatures(pool, opts \\ []),
    do: read(pool, "list_signatures", %{}, Options.validate!(opts, :call))

  @api_doc {:delete_signature,
            """
            Deletes the signature named `name` of the session (with `session:`) or
            the worker-level one (without, on every worker); `:not_found` if that
            scope has none. It is no longer replayed. Programs made from it keep
            their signature.
            """}
  def delete_signature(pool, name, opts \\ []) do
    opts = Options.validate!(opts, :call)
    name = to_string(name)

    mutate(pool, "delete_signature", %{"name" => name}, opts, fn session, _ ->
      {:delete_signature, session, name}
    end)
  end
end
