defmodule DSPyBridge.ApiDocs do
  @moduledoc false
  # The documented API lives in `DSPyBridge`, which delegates to focused modules; each
  # keeps the docs of its functions beside their code as `@api_doc {name, text}`, and
  # `use` gives it `doc/1`, which `DSPyBridge` reads for its `@doc`s.

  defmacro __using__(_opts) do
    quote do
      Module.register_attribute(__MODULE__, :api_doc, accumulate: true)
      @before_compile unquote(__MODULE__)
    end
  end

  defmacro __before_compile__(_env) do
    quote do
      @doc false
      @spec doc(atom()) :: String.t()
      def doc(name), do: Keyword.fetch!(@api_doc, name)
    end
  end
end
